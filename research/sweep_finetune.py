"""Issue 15, quality round 4: partial fine-tuning of MPNet's upper layers on CPU, against the default.

    nice -n 19 python -m research.sweep_finetune [--out bench/results/model_sweep_finetune.json] [--only SUBSTRING]
        [--epochs 3] [--probe] [--features-only]

The default (configs/default.yaml) runs only MPNet's first 6 of 12 layers and mean-pools layers 3 and 6 (each
L2-normalised) beside EfficientNet-Lite0 features, into a linear head (L-BFGS, L2 0.03, (neg/pos)-weighted BCE).
The layers fine-tuned here are the top of that 6-layer stack: layer 6 ("1 layer") or layers 5-6 ("2 layers").
MPNet runs once, frozen, over the 750 train+dev memes; the token hidden states entering layer 5 and layer 6
(outputs of layers 4 and 5) and the attention masks are cached under `.cache/quality/`. Layer 3's pooled
features (below every trained layer) and the image features are the default's own (`FeatureSource`, the
on-disk feature cache), so epoch 0 of every fine-tuned fold is exactly the default's fold model.

Per fold, fitted on the training part only: the default's linear head (fit_heads, L-BFGS) is the warm start;
then the pretrained layer(s) are deep-copied and trained with the head by AdamW (layers lr 3e-5, head lr 3e-4,
linear decay), the default's weighted BCE + its L2 0.03 on the head weights, batch 16, dropout as MPNet's
config, a FIXED number of epochs chosen a priori (never looking at the outer held-out fold). The feature
standardisation stays the one fitted on the pretrained features of the training part.

Every row is scored as `models.protocol.cross_validate` scores the comparison table's "CV micro-F1": 5-fold CV
(shuffled, seed 0) over train+dev (750 memes), each fold with per-label thresholds tuned on the other folds'
out-of-fold probabilities. The official test split is never read.
"""

import argparse
import copy
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.assemble import build_model
from models.config import RunConfig, load_config
from models.data import multi_hot
from models.encoders.hf_text import HFTextEncoder
from models.fit_heads import fit_heads
from models.optim import make_loss
from models.paths import REPO_ROOT, cache_dir
from models.preprocess import TextTokenizer
from models.sources import FeatureSource
from models.train import _load_pool
from research.sweep_table import Fitter, SweepTable, load_avg, machine, write_sweep

CACHED_INPUTS = (4, 5)  # hidden_states[k] = output of layer k = input of layer k+1


def hidden_cache(cfg: RunConfig, memes: list) -> tuple[HFTextEncoder, dict[int, list[np.ndarray]]]:
    """Token hidden states (per meme, trimmed to its real tokens) entering layers 5 and 6, at the default's
    max length; computed once (frozen, no grad) and kept under .cache/quality/."""
    t = cfg.text_encoder
    enc = HFTextEncoder(t.name_or_path, pooling="mean_layers", layers=list(t.layers), max_length=t.max_length)
    enc.eval()
    tok = TextTokenizer(enc.tokenizer_file, enc.text_spec)
    path = cache_dir() / "quality" / f"mpnet-hidden-in-L5-L6-{t.max_length}tok-{len(memes)}.pt"
    key = [m.text for m in memes]
    if path.is_file():
        blob = torch.load(path, weights_only=False)
        if blob["texts"] == key:
            return enc, blob["hidden"]
    hidden: dict[int, list[np.ndarray]] = {k: [None] * len(memes) for k in CACHED_INPUTS}
    order = sorted(range(len(memes)), key=lambda i: len(memes[i].text))
    with torch.no_grad():
        for s in range(0, len(order), 32):
            idx = order[s : s + 32]
            ids, mask = tok([memes[i].text for i in idx])
            out = enc.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            for j, i in enumerate(idx):
                n = int(mask[j].sum())
                for k in CACHED_INPUTS:
                    hidden[k][i] = out.hidden_states[k][j, :n].numpy().astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"texts": key, "hidden": hidden}, path)
    return enc, hidden


class TopLayers(nn.Module):
    """The pretrained MPNet layers from `first` (1-based) to the top of the default's 6-layer stack, run on
    cached inputs, + masked mean + L2 normalisation (as `pooling: mean_layers`)."""

    def __init__(self, enc: HFTextEncoder, first: int) -> None:
        super().__init__()
        encoder = enc.model.encoder
        self.layers = copy.deepcopy(encoder.layer[first - 1 :])
        self._position_bias = encoder.compute_position_bias  # frozen relative_attention_bias, not a submodule

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            bias = self._position_bias(h)
        ext = (1.0 - mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        for layer in self.layers:
            h = layer(h, ext, None, bias)[0]
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return nn.functional.normalize(pooled, dim=-1)


def pad(seqs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    h = torch.zeros(len(seqs), n, seqs[0].shape[1])
    mask = torch.zeros(len(seqs), n, dtype=torch.int64)
    for i, s in enumerate(seqs):
        h[i, : len(s)] = torch.from_numpy(s)
        mask[i, : len(s)] = 1
    return h, mask


def finetune_fitter(cfg: RunConfig, enc: HFTextEncoder, hidden: dict[int, list[np.ndarray]], img: np.ndarray,
                    txt0: np.ndarray, y: np.ndarray, n_layers: int, epochs: int, fold_log: list[dict],
                    lr_layers: float = 3e-5, lr_head: float = 3e-4, batch: int = 16) -> Fitter:
    """txt0 = the default's text features [L3 | L6]; the L6 block is replaced by the fine-tuned layers' output."""
    first = 7 - n_layers
    inputs = hidden[first - 1]
    l3 = torch.as_tensor(txt0[:, :768])
    x_img = torch.as_tensor(img)
    y_t = torch.as_tensor(y, dtype=torch.float32)
    l2 = cfg.training.weight_decay

    def text_of(top: TopLayers, idx: np.ndarray) -> torch.Tensor:
        h, mask = pad([inputs[i] for i in idx])
        return torch.cat([l3[idx], top(h, mask)], dim=1)

    def fit(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        head = fit_heads(cfg, img[tr], txt0[tr], y[tr])[0]  # the default's fold model: the warm start
        torch.set_num_threads(2)
        top = TopLayers(enc, first)
        loss_fn = make_loss(cfg.loss, y_t[tr])
        weights = [p for name, p in head.named_parameters() if name.endswith("weight")]
        opt = torch.optim.AdamW([{"params": top.layers.parameters(), "lr": lr_layers, "weight_decay": 0.01},
                                 {"params": head.parameters(), "lr": lr_head, "weight_decay": 0.0}])
        steps = epochs * -(-len(tr) // batch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / steps))
        losses = []
        for _ in range(epochs):
            top.train()  # MPNet's own dropout in the trained layers; the head stays in eval (no dropout), as
            # the default's L-BFGS fit
            perm = tr[torch.randperm(len(tr), generator=gen).numpy()]
            total = 0.0
            for s in range(0, len(perm), batch):
                b = perm[s : s + batch]
                logits = head(x_img[b], text_of(top, b))
                loss = loss_fn(logits[:, : y.shape[1]], y_t[b]) + l2 * sum((w * w).sum() for w in weights)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss) * len(b)
            losses.append(round(total / len(tr), 4))
        top.eval()
        out = []
        with torch.no_grad():
            for s in range(0, len(te), 64):
                b = te[s : s + 64]
                out.append(torch.sigmoid(head(x_img[b], text_of(top, b))))
        fold_log.append({"seconds": round(time.perf_counter() - started, 1), "train_loss_per_epoch": losses,
                         "load_avg": load_avg()})
        print(f"  fold done: {fold_log[-1]}", flush=True)
        return torch.cat(out).numpy()

    return fit


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "default.yaml")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "model_sweep_finetune.json")
    p.add_argument("--only", default="", help="run only the rows whose name contains this (the default's row "
                   "always runs: every row is compared with it fold by fold)")
    p.add_argument("--epochs", type=int, default=3, help="fixed a priori (no early stopping on the scored fold)")
    p.add_argument("--probe", action="store_true", help="time one fold of each fine-tuned row, write nothing")
    p.add_argument("--features-only", action="store_true", help="fill the caches and stop")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    cfg: RunConfig = load_config(args.config)
    memes, _, _ = _load_pool(cfg, None)  # train + dev only; the official test split is never loaded
    y = multi_hot(memes)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    base = FeatureSource(cfg, build_model(cfg, y.shape[1], False, [m.text for m in memes]), memes, y, None)
    timings["default's EfficientNet + MPNet L3/6 features (feature cache)"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    enc, hidden = hidden_cache(cfg, memes)
    timings["MPNet hidden states entering layers 5 and 6 (cached after the first run)"] = round(
        time.perf_counter() - t0, 1)
    print(f"features ready: {timings}", flush=True)
    img, txt0 = base.img, base.txt
    assert txt0.shape[1] == 1536, txt0.shape
    with torch.no_grad():  # the cache + TopLayers reproduce the default's layer-6 features
        for n_layers in (1, 2):
            top = TopLayers(enc, 7 - n_layers).eval()
            h, mask = pad([hidden[6 - n_layers][i] for i in range(16)])
            err = float((top(h, mask) - torch.as_tensor(txt0[:16, 768:])).abs().max())
            print(f"layer-6 features recomputed from the cached layer-{6 - n_layers} output: max |diff| {err:.2e}")
            assert err < 1e-3, err
    if args.features_only:
        return 0
    folds, seed = cfg.evaluation.folds, cfg.evaluation.seed

    if args.probe:
        from sklearn.model_selection import KFold

        tr, te = next(iter(KFold(folds, shuffle=True, random_state=seed).split(np.arange(len(y)))))
        for n_layers in (1, 2):
            log: list[dict] = []
            finetune_fitter(cfg, enc, hidden, img, txt0, y, n_layers, args.epochs, log)(tr, te)
            print(f"probe: {n_layers} layer(s), {args.epochs} epochs, one fold: {log[0]}")
        return 0

    default = "default: MPNet mean L3/6 + EfficientNet (recomputed)"
    cmd = "nice -n 19 python -m research.sweep_finetune " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    table = SweepTable(y, folds, seed, default, args.only)

    def default_fit(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        return base.fit_predict(tr, te)

    table.run(default, default_fit, cmd)
    names = {}
    for n_layers in (1, 2):
        layers = "layer 6" if n_layers == 1 else "layers 5-6"
        name = (f"fine-tune MPNet {layers} ({n_layers} of the default's 6) + default head warm start, "
                f"AdamW {args.epochs} epochs")
        names[n_layers] = name
        log: list[dict] = []
        table.run(name, finetune_fitter(cfg, enc, hidden, img, txt0, y, n_layers, args.epochs, log), cmd,
                  {"per_fold": log, "hyperparameters": {"epochs": args.epochs, "lr_layers": 3e-5, "lr_head": 3e-4,
                   "batch": 16, "layer_weight_decay": 0.01, "head_l2": cfg.training.weight_decay,
                   "loss": "weighted BCE (neg/pos)^1, as the default", "schedule": "linear decay", "threads": 2,
                   "max_length": cfg.text_encoder.max_length}})
    table.ensemble("ens: default + fine-tune layer 6 (prob. average)", cmd, default, names[1])

    doc = {"command": cmd,
           "split": f"5-fold CV over train+dev, {len(y)} memes (shuffled KFold, seed {seed}); each fold scored "
                    "with per-label thresholds tuned on the other folds' out-of-fold probabilities "
                    "(models.protocol.cross_validate); the official test split is never read",
           "timings_seconds": timings, "machine": machine(),
           "note": "2 cores shared with the lead's benchmarks, run under nice -n 19, torch threads 2; epochs fixed "
           "a priori; vs_default_* are paired per-fold differences against the default's row of the same run",
           "results": table.rows}
    write_sweep(args.out, doc, merge=bool(args.only), key="config")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
