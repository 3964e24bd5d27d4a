"""Issue 15, quality round: pooling views, layer sets, label-embedding attention and head ensembles on MPNet.

    python -m research.sweep_quality [--out bench/results/model_sweep_quality.json] [--only SUBSTRING]

Every row is scored as the comparison table's "CV micro-F1": 5-fold CV (shuffled, seed 0) over train+dev (750
memes), each fold scored with per-label thresholds tuned on the other folds' out-of-fold probabilities. The
official test split is never read. Features come from one cached MPNet pass (`models.quality_features`) and the
default's cached EfficientNet-Lite0 features.
"""

import argparse
import copy
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.assemble import build_model
from models.config import RunConfig, load_config
from models.data import multi_hot
from models.losses import positive_weights
from models.metrics import binarize, summary
from models.paths import REPO_ROOT
from models.protocol import cross_validate
from models.quality_features import mpnet_quality_features, token_states
from models.sources import FeatureSource
from models.thresholds import tune_thresholds
from models.train import _load_pool
from research.sweep_table import Fitter, load_avg, machine, write_sweep


def view(f: dict[str, np.ndarray], pooling: str, layers: list[int]) -> np.ndarray:
    return np.concatenate([f[pooling][:, k - 1] for k in layers], axis=1)


class LabelAttention(nn.Module):
    """1213Li-style: each technique's embedding (its name + description through MPNet) is a query over the
    meme's token states; the attended vector scores that technique, added to a linear head on global features."""

    def __init__(self, labels: torch.Tensor, global_dim: int, learn_query: bool = True) -> None:
        super().__init__()
        # [C, D], initialised at the label embeddings (kept fixed when not learned: 22x768 fewer parameters)
        self.query = nn.Parameter(labels.clone(), requires_grad=learn_query)
        self.w = nn.Parameter(torch.zeros_like(labels))
        self.b = nn.Parameter(torch.zeros(labels.shape[0]))
        self.glob = nn.Linear(global_dim, labels.shape[0])

    def forward(self, tok: torch.Tensor, mask: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        s = torch.einsum("ntd,cd->nct", tok, self.query) / tok.shape[-1] ** 0.5
        a = torch.softmax(s.masked_fill(mask[:, None, :] == 0, -1e4), dim=-1)
        v = torch.einsum("nct,ntd->ncd", a, tok)
        return (v * self.w).sum(-1) + self.b + self.glob(g)


def label_attention_fitter(tokens: list[np.ndarray], labels: np.ndarray, glob: np.ndarray, y: np.ndarray,
                           epochs: int = 40, wd: float = 0.03, lr: float = 3e-3, learn_query: bool = True) -> Fitter:
    n, length = len(tokens), max(len(t) for t in tokens)
    tok = torch.zeros(n, length, tokens[0].shape[1])
    mask = torch.zeros(n, length, dtype=torch.int64)
    for i, t in enumerate(tokens):
        tok[i, : len(t)] = torch.from_numpy(t.astype(np.float32))
        mask[i, : len(t)] = 1

    def fit(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        torch.manual_seed(0)
        flat = tok[tr][mask[tr] > 0]
        mu, sd = flat.mean(0), flat.std(0).clamp_min(1e-3)
        t_all = (tok - mu) / sd * mask[..., None]
        gm, gs = glob[tr].mean(0), glob[tr].std(0).clip(1e-3)
        g_all = torch.as_tensor((glob - gm) / gs, dtype=torch.float32)
        lab = torch.as_tensor((labels - labels.mean(0)) / labels.std(0).clip(1e-3), dtype=torch.float32)
        model = LabelAttention(lab, g_all.shape[1], learn_query)
        y_t = torch.as_tensor(y, dtype=torch.float32)
        pw = positive_weights(y_t[tr], 1.0)
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=lr, weight_decay=0.0)
        gen = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            perm = torch.as_tensor(tr)[torch.randperm(len(tr), generator=gen)]
            for s in range(0, len(perm), 64):
                b = perm[s : s + 64]
                logits = model(t_all[b], mask[b], g_all[b])
                loss = nn.functional.binary_cross_entropy_with_logits(logits, y_t[b], pos_weight=pw)
                loss = loss + wd * ((model.w ** 2).sum() + (model.glob.weight ** 2).sum()) / len(tr) * 64
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            return torch.sigmoid(model(t_all[te], mask[te], g_all[te])).numpy()

    return fit


def per_label_choice(fitters: list[Fitter], y: np.ndarray, inner: int = 5) -> Fitter:
    """Per technique, the member (e.g. a weight decay) with the best average precision on inner-CV
    out-of-fold probabilities of the training part only (nested: the scored fold never chooses)."""
    from sklearn.metrics import average_precision_score

    def fit(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        ap = np.zeros((len(fitters), y.shape[1]))
        for m, f in enumerate(fitters):
            oof = np.zeros((len(tr), y.shape[1]), np.float32)
            for k in range(inner):
                held = np.arange(len(tr)) % inner == k
                oof[held] = f(tr[~held], tr[held])
            for j in range(y.shape[1]):
                yt = y[tr, j]
                ap[m, j] = average_precision_score(yt, oof[:, j]) if 0 < yt.sum() < len(yt) else 0.0
        pick = ap.argmax(0)
        outs = [f(tr, te) for f in fitters]
        return np.stack([outs[pick[j]][:, j] for j in range(y.shape[1])], axis=1)

    return fit


def svm_fitter(x: np.ndarray, y: np.ndarray, c: float = 0.01) -> Fitter:
    from sklearn.svm import LinearSVC

    def fit(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        mu, sd = x[tr].mean(0), x[tr].std(0).clip(1e-3)
        xt, xe = (x[tr] - mu) / sd, (x[te] - mu) / sd
        out = np.zeros((len(te), y.shape[1]), np.float32)
        for j in range(y.shape[1]):
            yt = y[tr, j]
            if yt.min() == yt.max():
                out[:, j] = float(yt[0])
                continue
            m = LinearSVC(C=c, class_weight="balanced", max_iter=5000).fit(xt, yt)
            out[:, j] = 1 / (1 + np.exp(-m.decision_function(xe)))
        return out

    return fit


def crop(k: int):
    """Crop k of 5: the four corner quarters-plus (60% of each side) and the centre, as a PIL transform."""
    def f(im):  # noqa: ANN001, ANN202 (PIL image in, PIL image out)
        w, h = im.size
        cw, ch = int(w * 0.6), int(h * 0.6)
        x0 = [0, w - cw, 0, w - cw, (w - cw) // 2][k]
        y0 = [0, 0, h - ch, h - ch, (h - ch) // 2][k]
        return im.crop((x0, y0, x0 + cw, y0 + ch))
    return f


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "default.yaml")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "model_sweep_quality.json")
    p.add_argument("--only", default="", help="run only the rows whose name contains this")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    cfg: RunConfig = load_config(args.config)
    memes, _, _ = _load_pool(cfg, None)
    y = multi_hot(memes)
    t0 = time.perf_counter()
    feats, lab = mpnet_quality_features(memes)
    print(f"MPNet quality features ready in {time.perf_counter() - t0:.0f} s", flush=True)
    base = FeatureSource(cfg, build_model(cfg, y.shape[1], False, [m.text for m in memes]), memes, y, None)
    torch.set_num_threads(1)
    img = base.img
    folds, seed = cfg.evaluation.folds, cfg.evaluation.seed

    def head(x_txt: np.ndarray, x_img: np.ndarray = img, c: RunConfig = cfg) -> Fitter:
        variant = copy.copy(base)
        variant.cfg, variant.img, variant.txt = c, x_img, x_txt
        return variant.fit_predict

    def with_(**changes: dict) -> RunConfig:
        return replace(cfg, **{k: replace(getattr(cfg, k), **v) for k, v in changes.items()})

    rows: list[dict] = []
    oofs: dict[str, np.ndarray] = {}
    splits0: list[np.ndarray] = []

    def record(name: str, oof: np.ndarray, splits: list[np.ndarray], started: float, command: str) -> None:
        pred = np.zeros_like(y, dtype=np.int64)
        for te in splits:
            rest = np.setdiff1d(np.arange(len(y)), te)
            pred[te] = binarize(oof[te], tune_thresholds(oof[rest], y[rest], "micro"))
        r = summary(y, pred)
        ins = summary(y, binarize(oof, tune_thresholds(oof, y, "micro")))
        row = {"config": name, "cv_micro_f1": round(r["micro_f1"], 4), "cv_macro_f1": round(r["macro_f1"], 4),
               "cv_micro_f1_in_sample_thresholds": round(ins["micro_f1"], 4),
               "split": f"{folds}-fold CV seed {seed} over train+dev ({len(y)})",
               "command": command, "wall_seconds": round(time.perf_counter() - started, 1), "load_avg": load_avg()}
        rows.append(row)
        print(json.dumps(row), flush=True)

    def run(name: str, fit: Fitter) -> None:
        if args.only and args.only not in name:
            return
        started = time.perf_counter()
        r = cross_validate(fit, y, y.shape[1], folds, seed, "micro")
        oofs[name] = r.oof
        splits0[:] = r.folds
        record(name, r.oof, r.folds, started, f"python -m research.sweep_quality --only {shlex.quote(name)}")

    def rule(name: str, oof_of: str, decide: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> None:
        """A decision rule on a row's out-of-fold probabilities, each fold decided by thresholds that
        `decide(probs_rest, y_rest, probs_fold)` derives from the other folds only."""
        if oof_of not in oofs:
            return
        started, oof = time.perf_counter(), oofs[oof_of]
        pred = np.zeros_like(y, dtype=np.int64)
        for te in splits0:
            rest = np.setdiff1d(np.arange(len(y)), te)
            pred[te] = decide(oof[rest], y[rest], oof[te])
        r = summary(y, pred)
        row = {"config": name, "cv_micro_f1": round(r["micro_f1"], 4), "cv_macro_f1": round(r["macro_f1"], 4),
               "split": f"{folds}-fold CV seed {seed} over train+dev ({len(y)})",
               "command": "python -m research.sweep_quality --only default (rules run on the default's OOF)",
               "wall_seconds": round(time.perf_counter() - started, 1), "load_avg": load_avg()}
        rows.append(row)
        print(json.dumps(row), flush=True)

    def ensemble(name: str, *members: str) -> None:
        if any(m not in oofs for m in members):
            return
        oof = sum(oofs[m] for m in members) / len(members)
        record(name, oof, splits0, time.perf_counter(),
               "python -m research.sweep_quality (probability average of the named rows' out-of-fold probabilities)")

    mean36 = view(feats, "mean", [3, 6])
    max36 = view(feats, "max", [3, 6])
    run("default: MPNet mean L3/6 + EfficientNet", head(mean36))
    run("MPNet mean+max L3/6 + EfficientNet", head(np.hstack([mean36, max36])))
    run("MPNet mean L3/6 + max L6 + EfficientNet", head(np.hstack([mean36, view(feats, "max", [6])])))
    run("MPNet max L3/6 + EfficientNet", head(max36))
    run("MPNet mean L1-6 + EfficientNet", head(view(feats, "mean", [1, 2, 3, 4, 5, 6])))
    run("MPNet mean L1/3/6 + EfficientNet", head(view(feats, "mean", [1, 3, 6])))
    run("MPNet mean L3/6/12 + EfficientNet", head(view(feats, "mean", [3, 6, 12])))
    run("MPNet mean+max L3/6, wd 0.1 + EfficientNet",
        head(np.hstack([mean36, max36]), c=with_(training={"weight_decay": 0.1})))
    run("label attention on MPNet L6 tokens + linear(mean L3/6 + EfficientNet 0.3)",
        label_attention_fitter(token_states(feats, 6), lab["mean"][:, 5], np.hstack([mean36, 0.3 * img]), y))
    run("per-label weight decay {0.01, 0.03, 0.1, 0.3} by inner 5-fold AP: MPNet mean L3/6 + EfficientNet",
        per_label_choice([head(mean36, c=with_(training={"weight_decay": wd})) for wd in (0.01, 0.03, 0.1, 0.3)], y))
    la_glob = np.hstack([mean36, 0.3 * img])
    for ep, wd, lq in ((10, 0.03, True), (10, 0.3, False), (20, 1.0, False)):
        run(f"label attention L6 tokens, {ep} epochs, wd {wd}, query {'learned' if lq else 'fixed'}",
            label_attention_fitter(token_states(feats, 6), lab["mean"][:, 5], la_glob, y, ep, wd, learn_query=lq))
    run("linear SVM (C 0.01, balanced; sigmoid of margin) on standardised MPNet mean L3/6 + 0.3 EfficientNet",
        svm_fitter(la_glob, y))
    default = "default: MPNet mean L3/6 + EfficientNet"
    if not args.only or "crop" in args.only:
        from models.feature_cache import image_features

        t1 = time.perf_counter()
        crops = np.stack([image_features(base.model.image_encoder, memes, crop(k), f"crop60-{k}") for k in range(5)])
        print(f"5-crop EfficientNet features in {time.perf_counter() - t1:.0f} s", flush=True)
        run("EfficientNet 5-crop (60%) mean + full image, MPNet mean L3/6", head(mean36, (crops.mean(0) + img) / 2))
        run("EfficientNet full + 5-crop max (concat), MPNet mean L3/6", head(mean36, np.hstack([img, crops.max(0)])))

    def shrunk(alpha: float) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
        def decide(pr: np.ndarray, yr: np.ndarray, pt: np.ndarray) -> np.ndarray:
            per = tune_thresholds(pr, yr, "micro")
            glob = tune_thresholds(pr, yr, "micro", passes=0)  # the start point: one global threshold
            return binarize(pt, alpha * per + (1 - alpha) * glob)
        return decide

    def nested_alpha(pr: np.ndarray, yr: np.ndarray, pt: np.ndarray) -> np.ndarray:
        # alpha chosen on an inner 4-fold split of the other folds, then applied with their thresholds
        alphas = (0.0, 0.25, 0.5, 0.75, 1.0)
        score = np.zeros(len(alphas))
        for k in range(4):
            held = np.arange(len(yr)) % 4 == k
            for a, al in enumerate(alphas):
                score[a] += summary(yr[held], shrunk(al)(pr[~held], yr[~held], pr[held]))["micro_f1"]
        return shrunk(alphas[int(score.argmax())])(pr, yr, pt)

    for al in (0.0, 0.5, 0.75):
        rule(f"rule on default OOF: thresholds {al} x per-label + {1 - al} x global", default, shrunk(al))
    rule("rule on default OOF: shrinkage alpha chosen by inner 4-fold (nested)", default, nested_alpha)
    ensemble("ens: default + mean+max L3/6", "default: MPNet mean L3/6 + EfficientNet",
             "MPNet mean+max L3/6 + EfficientNet")
    ensemble("ens: default + label attention", "default: MPNet mean L3/6 + EfficientNet",
             "label attention on MPNet L6 tokens + linear(mean L3/6 + EfficientNet 0.3)")

    doc = {"command": "python -m research.sweep_quality " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
           "split": f"{folds}-fold CV (shuffled, seed {seed}) over train+dev ({len(y)} memes); each fold scored with "
                    "per-label thresholds tuned on the other folds' out-of-fold probabilities; the official test "
                    "split is never read",
           "machine": machine(), "note": "2 cores shared with other helpers' jobs, run under nice -n 19",
           "results": rows}
    write_sweep(args.out, doc, merge=True, key="config")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
