"""Multi-label metrics as the official SemEval scorer computes them (scikit-learn, zero_division=1)."""

import numpy as np
from sklearn.metrics import f1_score, precision_recall_fscore_support, roc_auc_score


def micro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(f1_score(y_true, y_pred, average="micro", zero_division=1))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(f1_score(y_true, y_pred, average="macro", zero_division=1))


def binarize(probs: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    return (probs >= np.asarray(thresholds)).astype(np.int64)


def summary(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """micro/macro F1, micro precision/recall and exact-match ratio of multi-hot predictions."""
    p, r, _, _ = precision_recall_fscore_support(y_true, y_pred, average="micro", zero_division=1)
    return {
        "micro_f1": micro_f1(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred),
        "micro_precision": float(p),
        "micro_recall": float(r),
        "exact_match": float(np.mean(np.all(y_true == y_pred, axis=1))),
    }


def per_label(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> list[dict[str, float | str]]:
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=1)
    return [
        {"label": lab, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, lab in enumerate(labels)
    ]


def binary_auroc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """AUROC of a binary head; None when only one class is present (undefined)."""
    if len(np.unique(y_true)) < 2:
        return None
    return float(roc_auc_score(y_true, scores))


def top_k_constant(y_train: np.ndarray, n: int, k: int = 3) -> np.ndarray:
    """The trivial baseline: always predict the k most frequent training labels."""
    top = np.argsort(-y_train.sum(0), kind="stable")[:k]
    pred = np.zeros((n, y_train.shape[1]), dtype=np.int64)
    pred[:, top] = 1
    return pred
