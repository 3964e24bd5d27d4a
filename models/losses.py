"""Multi-label losses: BCE with per-label positive weights, and focal loss (Lin et al. 2017)."""

import torch
from torch import nn
from torch.nn import functional as F


def positive_weights(y: torch.Tensor, power: float = 0.5, cap: float = 20.0) -> torch.Tensor:
    """(negatives/positives)^power per label: power 0.5 softens the 100:1 ratios of rare techniques."""
    pos = y.sum(0).clamp_min(1.0)
    neg = (y.shape[0] - y.sum(0)).clamp_min(1.0)
    return (neg / pos).pow(power).clamp(max=cap)


class WeightedBCE(nn.Module):
    def __init__(self, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.pos_weight)


class FocalLoss(nn.Module):
    """mean over elements of -alpha_t (1-p_t)^gamma log(p_t); alpha weighs positives, 1-alpha negatives.

    alpha < 0 disables the alpha weighting (plain modulated BCE).
    """

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25) -> None:
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        loss = ce * (1 - p_t).pow(self.gamma)
        if self.alpha >= 0:
            loss = loss * (self.alpha * targets + (1 - self.alpha) * (1 - targets))
        return loss.mean()
