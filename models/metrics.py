"""Multi-label metrics: the shared ones live in scoring.metrics (consumer/ uses them too); the training-only
baseline lives here."""

import numpy as np

from scoring.metrics import binarize, binary_auroc, macro_f1, micro_f1, per_label, summary

__all__ = ["binarize", "binary_auroc", "macro_f1", "micro_f1", "per_label", "summary", "top_k_constant"]


def top_k_constant(y_train: np.ndarray, n: int, k: int = 3) -> np.ndarray:
    """The trivial baseline: always predict the k most frequent training labels."""
    top = np.argsort(-y_train.sum(0), kind="stable")[:k]
    pred = np.zeros((n, y_train.shape[1]), dtype=np.int64)
    pred[:, top] = 1
    return pred
