"""Model selection protocol: K-fold out-of-fold probabilities and honestly tuned thresholds.

`Fitter(train_idx, predict_idx) -> probs` hides whether heads train on cached features or end to end.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import KFold
from tqdm import tqdm

from models.metrics import binarize, summary
from models.thresholds import Objective, tune_thresholds

Fitter = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class CVResult:
    oof: np.ndarray  # [N, C(+1)] out-of-fold probabilities
    thresholds: np.ndarray  # tuned on all out-of-fold rows: what the final model ships with
    cross_fitted: dict[str, float]  # each fold scored with thresholds tuned on the other folds only
    in_sample: dict[str, float]  # scored with `thresholds` (optimistic: tuned on the same rows)
    folds: list[np.ndarray]


def out_of_fold(fit: Fitter, n: int, n_outputs: int, folds: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    oof = np.zeros((n, n_outputs), dtype=np.float32)
    splits = [te for _, te in KFold(folds, shuffle=True, random_state=seed).split(np.arange(n))]
    for te in tqdm(splits, desc="cross-validation", unit="fold", leave=False):
        tr = np.setdiff1d(np.arange(n), te)
        oof[te] = fit(tr, te)
    return oof, splits


def cross_validate(fit: Fitter, y: np.ndarray, n_outputs: int, folds: int, seed: int, objective: Objective) -> CVResult:
    n_labels = y.shape[1]
    oof, splits = out_of_fold(fit, len(y), n_outputs, folds, seed)
    probs = oof[:, :n_labels]
    pred = np.zeros_like(y, dtype=np.int64)
    for te in splits:
        rest = np.setdiff1d(np.arange(len(y)), te)
        pred[te] = binarize(probs[te], tune_thresholds(probs[rest], y[rest], objective))
    thresholds = tune_thresholds(probs, y, objective)
    return CVResult(
        oof=oof,
        thresholds=thresholds,
        cross_fitted=summary(y, pred),
        in_sample=summary(y, binarize(probs, thresholds)),
        folds=splits,
    )
