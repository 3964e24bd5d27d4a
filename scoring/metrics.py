"""Multi-label metrics as the official SemEval-2021 Task 6 scorer computes them: scikit-learn's F1 on multi-hot
vectors with zero_division=1, and AUROC for a binary score."""

from collections.abc import Sequence
from typing import Any

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


def per_label(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> list[dict[str, float | str]]:
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=1)
    return [
        {"label": lab, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, lab in enumerate(labels)
    ]


def multilabel_report(gold: np.ndarray, pred: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Micro/macro F1, micro precision/recall and per-label figures for [N, K] multi-hot arrays (the report.json
    shape of `memeguard evaluate` and `memeguard replay`)."""
    gold, pred = np.asarray(gold).astype(np.int64), np.asarray(pred).astype(np.int64)
    figures = summary(gold, pred)
    return {
        "micro_f1": figures["micro_f1"],
        "macro_f1": figures["macro_f1"],
        "micro_precision": figures["micro_precision"],
        "micro_recall": figures["micro_recall"],
        "per_technique": {row["label"]: {k: v for k, v in row.items() if k != "label"}
                          for row in per_label(gold, pred, labels)},
    }


def binary_auroc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """AUROC of a binary score; None when only one class is present (the curve is undefined there)."""
    if len(np.unique(y_true)) < 2:
        return None
    return float(roc_auc_score(y_true, scores))
