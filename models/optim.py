"""Optimizers, LR schedules and losses built from config (shared by both training modes)."""

import torch
from torch import nn

from models.config import LossConfig, TrainingConfig
from models.errors import ConfigError
from models.losses import FocalLoss, WeightedBCE, positive_weights


def make_optimizer(groups: list[dict[str, object]], cfg: TrainingConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "nadam":  # the ResNet50+ALBERT write-up's choice
        return torch.optim.NAdam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"training.optimizer must be adamw, nadam or lbfgs (cached mode), not {cfg.optimizer!r}.")


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainingConfig, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    if cfg.scheduler == "step":  # decay after 10 epochs' worth of steps, as in the ALBERT write-up
        per_epoch = max(steps // max(cfg.epochs, 1), 1)
        return torch.optim.lr_scheduler.StepLR(opt, step_size=10 * per_epoch, gamma=0.1)
    if cfg.scheduler == "none":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    raise ConfigError(f"training.scheduler must be cosine, step or none, not {cfg.scheduler!r}.")


def make_loss(cfg: LossConfig, y: torch.Tensor) -> nn.Module:
    if cfg.kind == "focal":
        return FocalLoss(cfg.gamma, cfg.alpha)
    if cfg.kind == "bce":
        return WeightedBCE(positive_weights(y, cfg.pos_weight_power) if cfg.pos_weight_power > 0 else None)
    raise ConfigError(f"loss.kind must be bce or focal, not {cfg.kind!r}.")


def joint_loss(
    tech_loss: nn.Module, logits: torch.Tensor, y: torch.Tensor, harmful: torch.Tensor | None, n_labels: int
) -> torch.Tensor:
    """Technique loss, plus BCE on the harmful logit where the batch carries a binary label."""
    loss = tech_loss(logits[:, :n_labels], y)
    if harmful is not None:
        loss = loss + nn.functional.binary_cross_entropy_with_logits(logits[:, n_labels], harmful)
    return loss


def balanced_indices(harmful: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Class down-sampling: every positive and as many randomly drawn negatives (or vice versa)."""
    pos = torch.nonzero(harmful > 0.5).flatten()
    neg = torch.nonzero(harmful <= 0.5).flatten()
    small, big = (pos, neg) if len(pos) <= len(neg) else (neg, pos)
    keep = big[torch.randperm(len(big), generator=generator)[: len(small)]]
    return torch.cat([small, keep])
