"""Harm-head figures and the harm cut-offs of a decision policy, from scores and labels (numpy only).

Shared by training (the default bundle's policy, fitted on out-of-fold HarMeme scores) and by
`memeguard calibrate` (a policy fitted to a review budget on labelled data). A feed's base rate of harmful
memes rarely matches the labelled data's, so every rate is also given at a stated base rate `p`:
rate(p) = p * (share of harmful memes it hits) + (1 - p) * (share of harmless memes it hits).
"""

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score


def harm_figures(harmful: np.ndarray, p_harm: np.ndarray, severity: np.ndarray | None = None,
                 severity_probs: np.ndarray | None = None, threshold: float = 0.5) -> dict[str, float]:
    """AUROC, accuracy and macro-F1 of the binary task at `threshold`; 3-class accuracy and macro-F1 when given."""
    pred = (p_harm >= threshold).astype(int)
    out = {
        "auroc": float(roc_auc_score(harmful, p_harm)) if len(np.unique(harmful)) == 2 else float("nan"),
        "accuracy": float(accuracy_score(harmful, pred)),
        "macro_f1": float(f1_score(harmful, pred, average="macro", zero_division=0)),
        "harmful_rate": float(np.mean(harmful)),
        "n": float(len(harmful)),
    }
    if severity is not None and severity_probs is not None:
        sev_pred = severity_probs.argmax(1)
        out["severity_accuracy"] = float(accuracy_score(severity, sev_pred))
        out["severity_macro_f1"] = float(f1_score(severity, sev_pred, average="macro", labels=[0, 1, 2],
                                                  zero_division=0))
    return out


@dataclass(frozen=True)
class Operating:
    """What a (review, block) pair of harm cut-offs does on labelled scores."""

    review_rate: float  # share sent to review (not block) on the data
    block_rate: float
    allow_rate: float
    harmful_caught: float  # share of harmful memes reviewed or blocked
    block_precision: float  # share of blocked memes that are harmful (1.0 when nothing is blocked)
    flagged_rate_at_base: float  # review + block share expected on a feed with the base rate
    block_precision_at_base: float

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": round(float(v), 4) for k, v in self.__dict__.items()}


def operating_point(harmful: np.ndarray, flag: np.ndarray, block: np.ndarray, base_rate: float) -> Operating:
    """`flag`: reviewed or blocked; `block`: blocked (a subset of `flag`)."""
    pos, neg = harmful.astype(bool), ~harmful.astype(bool)

    def share(mask: np.ndarray, within: np.ndarray) -> float:
        return float(mask[within].mean()) if within.any() else 0.0

    tpr_b, fpr_b = share(block, pos), share(block, neg)
    blocked = block.sum()
    at_base_blocked = base_rate * tpr_b + (1 - base_rate) * fpr_b
    return Operating(
        review_rate=float((flag & ~block).mean()),
        block_rate=float(block.mean()),
        allow_rate=float((~flag).mean()),
        harmful_caught=share(flag, pos),
        block_precision=float(harmful[block].mean()) if blocked else 1.0,
        flagged_rate_at_base=base_rate * share(flag, pos) + (1 - base_rate) * share(flag, neg),
        block_precision_at_base=base_rate * tpr_b / at_base_blocked if at_base_blocked > 0 else 1.0,
    )


CUTOFFS = np.round(np.arange(0.02, 0.99, 0.01), 2)


def review_cutoff_for_budget(harmful: np.ndarray, p_harm: np.ndarray, base_rate: float, max_flagged: float) -> float:
    """The lowest harm cut-off whose expected review + block share at `base_rate` stays within `max_flagged`
    (the most harmful memes caught within the budget); 1.0 when no cut-off fits."""
    pos, neg = harmful.astype(bool), ~harmful.astype(bool)
    for c in CUTOFFS:
        hit = p_harm >= c
        if base_rate * hit[pos].mean() + (1 - base_rate) * hit[neg].mean() <= max_flagged:
            return float(c)
    return 1.0


def review_cutoff_for_recall(harmful: np.ndarray, p_harm: np.ndarray, min_caught: float) -> float:
    """The highest harm cut-off that still sends at least `min_caught` of the harmful memes to review or block."""
    pos = harmful.astype(bool)
    for c in CUTOFFS[::-1]:
        if (p_harm[pos] >= c).mean() >= min_caught:
            return float(c)
    return float(CUTOFFS[0])


def block_cutoff_for_precision(harmful: np.ndarray, score: np.ndarray, base_rate: float, min_precision: float,
                               min_blocked: int = 10) -> float:
    """The lowest cut-off on `score` whose block precision at `base_rate` reaches `min_precision` with at least
    `min_blocked` memes blocked in the data (fewer is too little evidence); 1.0 (never block) otherwise."""
    pos, neg = harmful.astype(bool), ~harmful.astype(bool)
    for c in CUTOFFS:
        hit = score >= c
        if hit.sum() < min_blocked:
            break
        tp, fp = base_rate * hit[pos].mean(), (1 - base_rate) * hit[neg].mean()
        if tp / (tp + fp) >= min_precision:
            return float(c)
    return 1.0
