"""Per-label decision thresholds, tuned on held-out (out-of-fold) probabilities.

Coordinate ascent on a coarse grid: micro-F1 is additive in per-label TP/FP/FN, so each label's best
threshold given the others is a vectorised search. The coarse grid and a floor on the rare labels' grid
limit how far thresholds chase noise from the handful of positives some techniques have.
"""

from typing import Literal

import numpy as np

Objective = Literal["micro", "macro", "mixed"]
GRID = np.round(np.arange(0.05, 0.951, 0.025), 4)


def _counts(probs: np.ndarray, y: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TP, FP, FN per (grid value, label): arrays [G, C]."""
    pred = probs[None, :, :] >= grid[:, None, None]  # [G, N, C]
    pos = y[None, :, :] > 0.5
    tp = (pred & pos).sum(1)
    fp = (pred & ~pos).sum(1)
    fn = (~pred & pos).sum(1)
    return tp, fp, fn


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    # zero_division=1 as the official scorer: nothing to predict and nothing predicted is perfect.
    return np.where(denom == 0, 1.0, 2 * tp / np.maximum(denom, 1))


def tune_thresholds(
    probs: np.ndarray,
    y: np.ndarray,
    objective: Objective = "micro",
    passes: int = 3,
    grid: np.ndarray = GRID,
) -> np.ndarray:
    """Thresholds [C] maximising micro-F1, macro-F1, or their mean ('mixed') on (probs, y)."""
    tp, fp, fn = _counts(probs, y, grid)
    n_labels = probs.shape[1]
    # Start from the single best global threshold, then refine label by label.
    start = max(range(len(grid)), key=lambda g: _score(tp[g], fp[g], fn[g], objective))
    chosen = np.full(n_labels, start)
    for _ in range(passes):
        changed = False
        for c in range(n_labels):
            cols = np.arange(n_labels)
            best_g, best_s = chosen[c], -1.0
            for g in range(len(grid)):
                trial = chosen.copy()
                trial[c] = g
                s = _score(tp[trial, cols], fp[trial, cols], fn[trial, cols], objective)
                if s > best_s + 1e-12:
                    best_g, best_s = g, s
            changed |= best_g != chosen[c]
            chosen[c] = best_g
        if not changed:
            break
    return grid[chosen].astype(np.float32)


def _score(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, objective: Objective) -> float:
    micro = float(_f1(tp.sum(), fp.sum(), fn.sum()))
    if objective == "micro":
        return micro
    macro = float(_f1(tp, fp, fn).mean())
    return macro if objective == "macro" else 0.5 * (micro + macro)
