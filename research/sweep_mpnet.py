"""MPNet against the offline default: encoders, fusions, losses, head ensembles and threshold strategies.

    python -m research.sweep_mpnet [--out bench/results/model_sweep_mpnet.json] [--only SUBSTRING]

Every row is scored by `models.protocol.cross_validate` exactly as the comparison table's "CV micro-F1":
5-fold CV (shuffled, seed 0) over train+dev (750 memes), each fold scored with thresholds tuned on the other
folds' out-of-fold probabilities. The official test split is never read. Frozen features come from the
on-disk feature cache (`models.feature_cache`): MPNet is encoded once with every layer's mean-pooled,
L2-normalised hidden state, and a config using a subset of layers is a slice of that array (the same numbers
a `pooling: mean_layers` encoder with those layers computes).
"""

import argparse
import copy
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from models.assemble import build_model
from models.config import RunConfig, load_config
from models.data import multi_hot
from models.encoders.hf_text import HFTextEncoder
from models.feature_cache import text_features
from models.metrics import binarize, summary
from models.paths import REPO_ROOT
from models.protocol import cross_validate
from models.sources import FeatureSource
from models.thresholds import tune_thresholds
from models.train import _load_pool
from research.sweep import knn_fitter, tfidf_fitter
from research.sweep_table import Fitter, load_avg, machine, write_sweep

MPNET_LAYERS = list(range(1, 13))  # all 12 layers in one pass; 768-d each


def mpnet_all_layers(memes: list, max_length: int) -> np.ndarray:
    """[N, 12*768]: block k-1 is layer k's masked mean, L2-normalised (as `pooling: mean_layers`)."""
    enc = HFTextEncoder("mpnet", pooling="mean_layers", layers=MPNET_LAYERS, max_length=max_length)
    return text_features(enc, memes)


def layer_slice(all_layers: np.ndarray, layers: list[int], width: int = 768) -> np.ndarray:
    return np.concatenate([all_layers[:, (k - 1) * width : k * width] for k in layers], axis=1)


# ----- decision rules on out-of-fold probabilities (scored cross-fitted, as protocol.cross_validate) -----

def _global_threshold(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    grid = np.round(np.arange(0.05, 0.951, 0.025), 4)
    best = max(grid, key=lambda t: summary(y, (probs >= t).astype(np.int64))["micro_f1"])
    return np.full(probs.shape[1], best, dtype=np.float32)


def _top_k(probs: np.ndarray, k: int) -> np.ndarray:
    pred = np.zeros(probs.shape, dtype=np.int64)
    order = np.argsort(-probs, axis=1)[:, :k]
    np.put_along_axis(pred, order, 1, axis=1)
    return pred


def _expected_count_k(probs: np.ndarray, scale: float) -> np.ndarray:
    """Rank-based: flag each meme's round(scale * sum of its probabilities) best techniques (at least 1)."""
    ks = np.clip(np.rint(scale * probs.sum(1)), 1, probs.shape[1]).astype(int)
    order = np.argsort(-probs, axis=1)
    pred = np.zeros(probs.shape, dtype=np.int64)
    for i, k in enumerate(ks):
        pred[i, order[i, :k]] = 1
    return pred


def decide_cross_fitted(oof: np.ndarray, y: np.ndarray, folds: list[np.ndarray], rule: str) -> dict[str, float]:
    """Each fold decided with a rule tuned on the other folds' out-of-fold probabilities only."""
    pred = np.zeros_like(y, dtype=np.int64)
    n = len(y)
    for te in folds:
        rest = np.setdiff1d(np.arange(n), te)
        pr, yr, pt = oof[rest], y[rest], oof[te]
        if rule == "per_label":
            pred[te] = binarize(pt, tune_thresholds(pr, yr, "micro"))
        elif rule == "per_label_min1":  # per-label thresholds, and at least the top technique
            p = binarize(pt, tune_thresholds(pr, yr, "micro"))
            p[np.arange(len(te)), pt.argmax(1)] = 1
            pred[te] = p
        elif rule == "global":
            pred[te] = binarize(pt, _global_threshold(pr, yr))
        elif rule == "top_k":
            k = max(range(1, 6), key=lambda k: summary(yr, _top_k(pr, k))["micro_f1"])
            pred[te] = _top_k(pt, k)
        elif rule == "expected_count_k":
            scales = np.round(np.arange(0.5, 2.01, 0.1), 2)
            s = max(scales, key=lambda s: summary(yr, _expected_count_k(pr, s))["micro_f1"])
            pred[te] = _expected_count_k(pt, s)
        else:
            raise ValueError(rule)
    return summary(y, pred)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "minilm_efficientnet.yaml",
                   help="the MiniLM + EfficientNet baseline whose cached features the rows reuse")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "model_sweep_mpnet.json")
    p.add_argument("--only", default="", help="run only the rows whose name contains this")
    p.add_argument("--features-only", action="store_true", help="fill the feature cache and stop")
    p.add_argument("--reuse", type=Path, help="JSON lines of rows already scored (this script's output): kept, "
                   "not recomputed, unless an ensemble needs their out-of-fold probabilities")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    cfg: RunConfig = load_config(args.config)
    memes, _, _ = _load_pool(cfg, None)
    y = multi_hot(memes)
    t0 = time.perf_counter()
    mp128 = mpnet_all_layers(memes, 128)
    print(f"MPNet features ready in {time.perf_counter() - t0:.0f} s", flush=True)
    if args.features_only:
        return 0
    base = FeatureSource(cfg, build_model(cfg, y.shape[1], False, [m.text for m in memes]), memes, y, None)
    torch.set_num_threads(1)
    folds, seed = cfg.evaluation.folds, cfg.evaluation.seed
    img, minilm = base.img, base.txt
    none = np.zeros((len(y), 0), np.float32)

    def head(c: RunConfig, x_img: np.ndarray, x_txt: np.ndarray) -> Fitter:
        variant = copy.copy(base)  # shares the cached arrays; only the features / head settings differ
        variant.cfg, variant.img, variant.txt = c, x_img, x_txt
        return variant.fit_predict

    def with_(c: RunConfig = cfg, **changes: dict) -> RunConfig:
        return replace(c, **{k: replace(getattr(c, k), **v) for k, v in changes.items()})

    rows: list[dict] = []
    oofs: dict[str, np.ndarray] = {}  # seed-0 out-of-fold probabilities, for ensembles
    reused = {}
    if args.reuse:
        reused = {r["variant"]: r for r in map(json.loads, args.reuse.read_text().splitlines()) if r}

    def record(name: str, oof: np.ndarray, splits: list[np.ndarray], started: float, rules: tuple[str, ...]) -> None:
        r = decide_cross_fitted(oof, y, splits, "per_label")  # = protocol.cross_validate's cross_fitted
        in_sample = summary(y, binarize(oof, tune_thresholds(oof, y, "micro")))
        row = {"variant": name, "cv_micro_f1": round(r["micro_f1"], 4), "cv_macro_f1": round(r["macro_f1"], 4),
               "cv_micro_f1_in_sample_thresholds": round(in_sample["micro_f1"], 4),
               "seconds": round(time.perf_counter() - started, 1), "load_avg": load_avg()}
        for rule in rules:
            s = decide_cross_fitted(oof, y, splits, rule)
            row[f"rule_{rule}"] = {"cv_micro_f1": round(s["micro_f1"], 4), "cv_macro_f1": round(s["macro_f1"], 4)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    def run(name: str, fit: Fitter, rules: tuple[str, ...] = (), fold_seed: int = seed, keep: bool = False) -> None:
        if args.only and args.only not in name:
            return
        if name in reused and not keep:
            rows.append(reused[name])
            return
        started = time.perf_counter()
        r = cross_validate(fit, y, y.shape[1], folds, fold_seed, "micro")
        if fold_seed == seed:
            oofs[name] = r.oof
        record(name, r.oof, r.folds, started, rules)

    def ensemble(name: str, *names_weights: tuple[str, float]) -> None:
        """Probability average of out-of-fold predictions already made on the same folds: identical to
        averaging the members' fold models, without refitting them."""
        if args.only and args.only not in name:
            return
        oof = sum(w * oofs[n] for n, w in names_weights) / sum(w for _, w in names_weights)
        record(name, oof, splits0, time.perf_counter(), rules)

    from sklearn.model_selection import KFold

    splits0 = [te for _, te in KFold(folds, shuffle=True, random_state=seed).split(np.arange(len(y)))]

    mp_last = layer_slice(mp128, [12])
    mp_mid = layer_slice(mp128, [4, 8, 12])
    fitters: dict[str, Fitter] = {
        "default (MiniLM L2/4/6 + EfficientNet, linear, wd 0.03, iw 0.3)": head(cfg, img, minilm),
        "MiniLM L2/4/6 text only": head(cfg, none, minilm),
        "MPNet L12 (128 tok) text only": head(cfg, none, mp_last),
        "MPNet L4/8/12 text only": head(cfg, none, mp_mid),
        "MPNet L6/9/12 text only": head(cfg, none, layer_slice(mp128, [6, 9, 12])),
        "MPNet L2/4/6/8/10/12 text only": head(cfg, none, layer_slice(mp128, [2, 4, 6, 8, 10, 12])),
        "MPNet L12 + EfficientNet iw 0.3": head(cfg, img, mp_last),
        "MPNet L4/8/12 + EfficientNet iw 0.3": head(cfg, img, mp_mid),
        "MPNet L4/8/12 + MiniLM L2/4/6 (text concat)": head(cfg, none, np.hstack([mp_mid, minilm])),
        "MPNet L4/8/12 + MiniLM L2/4/6 + EfficientNet iw 0.3": head(cfg, img, np.hstack([mp_mid, minilm])),
    }
    # Serving cost: a mean_layers encoder runs only up to its highest layer, so fewer layers is a faster model.
    for layers in ([2, 4, 6], [3, 6], [2, 4, 6, 8], [4, 8], [3, 6, 9]):
        name = f"fast: MPNet L{'/'.join(map(str, layers))} (first {max(layers)} of 12 layers) + EfficientNet iw 0.3"
        fitters[name] = head(cfg, img, layer_slice(mp128, layers))
    for wd in (0.01, 0.1, 0.3):
        fitters[f"MPNet L4/8/12 + EfficientNet, wd {wd}"] = head(with_(training={"weight_decay": wd}), img, mp_mid)
    for iw in (0.15, 0.5):
        fitters[f"MPNet L4/8/12 + EfficientNet, iw {iw}"] = head(with_(head={"image_weight": iw}), img, mp_mid)
    fitters["MPNet L4/8/12 + EfficientNet, pos_weight_power 0.5"] = head(
        with_(loss={"pos_weight_power": 0.5}), img, mp_mid)
    fitters["MPNet L4/8/12 + EfficientNet, unweighted BCE"] = head(with_(loss={"pos_weight_power": 0.0}), img, mp_mid)
    fitters["MPNet L4/8/12 + EfficientNet, focal (gamma 2, alpha 0.25)"] = head(
        with_(loss={"kind": "focal", "gamma": 2.0, "alpha": 0.25}), img, mp_mid)
    fitters["MPNet L4/8/12 + EfficientNet, focal (gamma 1, no alpha)"] = head(
        with_(loss={"kind": "focal", "gamma": 1.0, "alpha": -1.0}), img, mp_mid)
    # 3 seeds x 40 epochs took 133 s a fold on the shared CPU: one seed, 20 epochs keeps it to minutes.
    mlp = with_(head={"hidden": 256, "dropout": 0.5},
                training={"optimizer": "adamw", "epochs": 20, "lr": 1e-3, "weight_decay": 0.05, "seeds": [0]})
    fitters["MPNet L4/8/12 + EfficientNet, MLP 256 (AdamW, 20 epochs)"] = head(mlp, img, mp_mid)
    fitters["MPNet L4/8/12 kNN-15 label vote"] = knn_fitter(mp_mid, y)
    fitters["TF-IDF logistic"] = tfidf_fitter([m.text for m in memes], y)

    rules = ("per_label", "per_label_min1", "global", "top_k", "expected_count_k")
    best_linear = "MPNet L4/8/12 + EfficientNet iw 0.3"
    default = "default (MiniLM L2/4/6 + EfficientNet, linear, wd 0.03, iw 0.3)"
    members = {default, best_linear, "MPNet L4/8/12 + EfficientNet, MLP 256 (AdamW, 20 epochs)",
               "MPNet L4/8/12 kNN-15 label vote", "TF-IDF logistic",
               "MPNet L4/8/12 + EfficientNet, focal (gamma 2, alpha 0.25)", "MiniLM L2/4/6 text only"}
    for name, fit in fitters.items():
        run(name, fit, rules if name in (default, best_linear) else (), keep=name in members)
    ensemble("ens: MPNet+Eff linear + default (0.5/0.5)", (best_linear, 1), (default, 1))
    ensemble("ens: MPNet+Eff linear + MiniLM text linear (0.5/0.5)", (best_linear, 1), ("MiniLM L2/4/6 text only", 1))
    ensemble("ens: MPNet+Eff linear + MLP (0.5/0.5)", (best_linear, 1),
             ("MPNet L4/8/12 + EfficientNet, MLP 256 (AdamW, 20 epochs)", 1))
    ensemble("ens: MPNet+Eff linear + kNN (0.7/0.3)", (best_linear, 0.7), ("MPNet L4/8/12 kNN-15 label vote", 0.3))
    ensemble("ens: MPNet+Eff linear + TF-IDF (0.7/0.3)", (best_linear, 0.7), ("TF-IDF logistic", 0.3))
    ensemble("ens: MPNet+Eff linear + focal (0.5/0.5)", (best_linear, 1),
             ("MPNet L4/8/12 + EfficientNet, focal (gamma 2, alpha 0.25)", 1))
    ensemble("ens: MPNet+Eff linear + default + TF-IDF (0.4/0.4/0.2)", (best_linear, 0.4), (default, 0.4),
             ("TF-IDF logistic", 0.2))

    def stacked(first: Fitter) -> Fitter:
        """Label co-occurrence: a second-stage logistic regression per label over all 22 first-stage
        probabilities, fitted on inner 5-fold out-of-fold probabilities of the training part only."""
        from sklearn.linear_model import LogisticRegression

        def fit(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
            inner = np.zeros((len(tr), y.shape[1]), np.float32)
            for k in range(5):
                held = np.arange(len(tr)) % 5 == k
                inner[held] = first(tr[~held], tr[held])
            top = first(tr, te)
            out = np.zeros_like(top)
            for j in range(y.shape[1]):
                target = y[tr, j]
                if target.min() == target.max():
                    out[:, j] = top[:, j]
                    continue
                clf = LogisticRegression(C=1.0, max_iter=500).fit(inner, target)
                out[:, j] = clf.predict_proba(top)[:, 1]
            return out

        return fit

    run("stacked co-occurrence (2nd-stage logistic over 22 OOF probs) on MPNet L4/8/12 + EfficientNet",
        stacked(fitters[best_linear]))
    for fold_seed in (1, 2):  # how much of a difference is the split: the same two configs, other shuffles
        for name in (default, best_linear, "fast: MPNet L3/6 (first 6 of 12 layers) + EfficientNet iw 0.3",
                     "fast: MPNet L2/4/6/8 (first 8 of 12 layers) + EfficientNet iw 0.3"):
            run(f"{name} [fold seed {fold_seed}]", fitters[name], (), fold_seed)

    doc = {"command": "python -m research.sweep_mpnet " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
           "split": f"{folds}-fold CV (shuffled, seed {seed}) over train+dev ({len(y)} memes); each fold scored "
                    "with thresholds (or the decision rule) tuned on the other folds' out-of-fold probabilities; "
                    "the official test split is never read",
           "machine": machine(), "note": "2 cores shared with other jobs; seconds are wall time under that load",
           "results": rows}
    write_sweep(args.out, doc, merge=bool(args.only), key="variant")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
