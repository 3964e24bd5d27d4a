"""Where the offline default sits: its head settings swept, and two cheap ensembles, under the default's CV.

    python -m research.sweep [--config configs/default.yaml] [--out bench/results/default_sweep.json]

Uses the config's cached encoder features (`memeguard train CONFIG` builds them)
and `models.protocol.cross_validate`: 5-fold CV over train+dev (750), each fold scored with thresholds tuned
on the other folds' out-of-fold probabilities — the same figure as the comparison table's "CV micro-F1".
"""

import argparse
import copy
import itertools
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors

from models.assemble import build_model
from models.config import RunConfig, load_config
from models.data import multi_hot
from models.paths import REPO_ROOT
from models.protocol import cross_validate
from models.sources import FeatureSource
from models.train import _load_pool


def tfidf_fitter(texts: list[str], y: np.ndarray):
    def fit(train_idx: np.ndarray, test_idx: np.ndarray) -> np.ndarray:
        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        x_train = vec.fit_transform([texts[i] for i in train_idx])
        x_test = vec.transform([texts[i] for i in test_idx])
        out = np.zeros((len(test_idx), y.shape[1]), np.float32)
        for j in range(y.shape[1]):
            positives = int(y[train_idx, j].sum())
            if positives in (0, len(train_idx)):
                out[:, j] = float(positives > 0)
                continue
            clf = LogisticRegression(C=4, max_iter=1000, class_weight="balanced").fit(x_train, y[train_idx, j])
            out[:, j] = clf.predict_proba(x_test)[:, 1]
        return out

    return fit


def knn_fitter(embeddings: np.ndarray, y: np.ndarray, k: int = 15):
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)

    def fit(train_idx: np.ndarray, test_idx: np.ndarray) -> np.ndarray:
        index = NearestNeighbors(n_neighbors=k, metric="cosine").fit(unit[train_idx])
        dist, nearest = index.kneighbors(unit[test_idx])
        weight = np.maximum(1 - dist, 1e-3)
        return (np.einsum("nk,nkc->nc", weight, y[train_idx][nearest]) / weight.sum(1, keepdims=True)).astype(np.float32)

    return fit


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "default.yaml")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "default_sweep.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg: RunConfig = load_config(args.config)
    memes, _, _ = _load_pool(cfg, None)
    y = multi_hot(memes)
    source = FeatureSource(cfg, build_model(cfg, y.shape[1], False, [m.text for m in memes]), memes, y, None)
    folds, seed, objective = cfg.evaluation.folds, cfg.evaluation.seed, cfg.evaluation.threshold_objective

    def score(fit) -> dict[str, float]:
        r = cross_validate(fit, y, y.shape[1], folds, seed, objective).cross_fitted
        return {"cv_micro_f1": round(r["micro_f1"], 4), "cv_macro_f1": round(r["macro_f1"], 4)}

    def head_fitter(c: RunConfig):
        variant = copy.copy(source)  # shares the cached features; only the head settings differ
        variant.cfg = c
        return variant.fit_predict

    rows = [{"variant": "default", **score(source.fit_predict)}]
    print(rows[-1], flush=True)
    for wd, iw, pw in itertools.product([0.01, 0.03, 0.1], [0.0, 0.3, 0.6], [0.5, 1.0]):
        c = replace(cfg, training=replace(cfg.training, weight_decay=wd), head=replace(cfg.head, image_weight=iw),
                    loss=replace(cfg.loss, pos_weight_power=pw))
        rows.append({"variant": f"weight_decay={wd} image_weight={iw} pos_weight_power={pw}", **score(head_fitter(c))})
        print(rows[-1], flush=True)
    others = (("tfidf-logreg", tfidf_fitter([m.text for m in memes], y)), ("text-knn15", knn_fitter(source.txt, y)))
    for name, other in others:
        rows.append({"variant": name, **score(other)})
        print(rows[-1], flush=True)
        for w in (0.2, 0.35, 0.5):
            def mixed(tr: np.ndarray, te: np.ndarray, other=other, w=w) -> np.ndarray:
                return (1 - w) * source.fit_predict(tr, te) + w * other(tr, te)

            rows.append({"variant": f"default + {w} x {name} (probability average)", **score(mixed)})
            print(rows[-1], flush=True)
    doc = {"command": "python -m research.sweep " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
           "split": f"{folds}-fold CV (seed {seed}) over train+dev ({len(y)} memes), thresholds tuned on the other folds",
           "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
