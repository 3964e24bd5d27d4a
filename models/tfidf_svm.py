"""TF-IDF + linear SVM text-only baseline (the LAION person/no-person write-up's best model).

Not a neural network: its run folder holds a pickled scikit-learn pipeline instead of a checkpoint,
and `load_for_export` refuses it with NotExportableError.
"""

import pickle
import time
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.svm import LinearSVC

from models.config import RunConfig, save_config
from models.data import Meme, multi_hot
from models.metrics import binarize, summary, top_k_constant
from models.protocol import cross_validate
from models.run_dir import CONFIG, METRICS, PREPROCESSING, RUN_INFO, THRESHOLDS, write_json
from models.thresholds import tune_thresholds
from models.train import _load_pool
from schemas.manifest import ImagePreprocessing, TextPreprocessing
from schemas.techniques import TECHNIQUES

PIPELINE = "model.pkl"


class ConstantScorer:
    """Stands in for a label with no positive example in a training fold (LinearSVC needs two classes)."""

    def decision_function(self, x: object) -> np.ndarray:
        return np.full(x.shape[0], -10.0)  # type: ignore[attr-defined]


def _pipeline() -> Pipeline:
    features = FeatureUnion(
        [
            ("words", TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2)),
            ("chars", TfidfVectorizer(sublinear_tf=True, analyzer="char_wb", ngram_range=(2, 5), min_df=2)),
        ]
    )
    svm = OneVsRestClassifier(LinearSVC(C=0.5, class_weight="balanced"))
    return Pipeline([("tfidf", features), ("svm", svm)])


def fit(texts: list[str], y: np.ndarray) -> Pipeline:
    # Labels with no positive in this fold are fitted on a copy with one flipped row, then replaced by
    # a constant "never" scorer, so the multi-output shape stays 22.
    empty = np.flatnonzero(y.sum(0) == 0)
    y_fit = y.copy()
    y_fit[0, empty] = 1
    pipe = _pipeline().fit(texts, y_fit)
    for c in empty:
        pipe.named_steps["svm"].estimators_[c] = ConstantScorer()
    return pipe


def scores(pipe: Pipeline, texts: list[str]) -> np.ndarray:
    """SVM margins squashed to (0, 1) so the same threshold grid as the neural heads applies."""
    return 1.0 / (1.0 + np.exp(-2.0 * pipe.decision_function(texts)))


def train_tfidf_svm(cfg: RunConfig, out_root: Path, limit: int | None = None) -> Path:
    started = time.perf_counter()
    memes, train_idx, dev_idx = _load_pool(cfg, limit)
    texts = [m.text for m in memes]
    y = multi_hot(memes)

    def fit_predict(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        return scores(fit([texts[i] for i in tr], y[tr]), [texts[i] for i in te])

    objective = cfg.evaluation.threshold_objective
    cv = cross_validate(fit_predict, y, y.shape[1], cfg.evaluation.folds, cfg.evaluation.seed, objective)
    metrics = {f"cv_{k}": v for k, v in cv.cross_fitted.items()}
    metrics |= {f"cv_{k}_oof_thresholds": v for k, v in cv.in_sample.items() if k.endswith("f1")}
    if len(dev_idx):
        th = tune_thresholds(cv.oof[train_idx], y[train_idx], objective)
        pred = binarize(fit_predict(train_idx, dev_idx), th)
        metrics |= {f"dev_{k}": v for k, v in summary(y[dev_idx], pred).items()}
        metrics["dev_baseline_top3_micro_f1"] = summary(y[dev_idx], top_k_constant(y[train_idx], len(dev_idx)))["micro_f1"]
    final = fit(texts, y)
    metrics["train_seconds"] = time.perf_counter() - started
    run_dir = out_root / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / CONFIG)
    write_json(run_dir / THRESHOLDS, {"labels": list(TECHNIQUES), "thresholds": [float(t) for t in cv.thresholds]})
    write_json(run_dir / METRICS, {k: round(float(v), 4) for k, v in metrics.items()})
    write_json(
        run_dir / PREPROCESSING,
        {
            "image": ImagePreprocessing().model_dump(mode="json"),
            "text": TextPreprocessing().model_dump(mode="json"),
            "unused_inputs": ["pixel_values"],
        },
    )
    write_json(
        run_dir / RUN_INFO,
        {
            "config": cfg.name,
            "n_pool": len(memes),
            "exportable": False,
            "cv_protocol": f"{cfg.evaluation.folds}-fold CV over {'+'.join(cfg.data.pool)}, "
            "thresholds tuned on the other folds",
        },
    )
    (run_dir / PIPELINE).write_bytes(pickle.dumps(final))
    return run_dir


def load_pipeline(run_dir: Path) -> Pipeline:
    return pickle.loads((run_dir / PIPELINE).read_bytes())


def predict_memes(run_dir: Path, memes: list[Meme]) -> np.ndarray:
    return scores(load_pipeline(run_dir), [m.text for m in memes])
