"""Fusion modules, losses, thresholds and metrics: the building blocks of models/."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from models.fusion import Fusion, FusionHead
from models.losses import FocalLoss, WeightedBCE, positive_weights
from models.metrics import binarize, macro_f1, micro_f1, summary, top_k_constant
from models.thresholds import tune_thresholds


@pytest.mark.parametrize("kind", ["concat", "align", "cross", "late"])
def test_fusion_shapes_and_gradients(kind: str) -> None:
    torch.manual_seed(0)
    fusion = Fusion(kind, image_dim=12, text_dim=8, n_out=22, hidden=16, proj_dim=10, cross_dim=4, dropout=0.0)
    img = torch.randn(5, 12, requires_grad=True)
    txt = torch.randn(5, 8, requires_grad=True)
    out = fusion(img, txt)
    assert out.shape == (5, 22)
    out.sum().backward()
    # Both modalities must reach the logits, and every parameter must learn.
    assert img.grad is not None and img.grad.abs().sum() > 0
    assert txt.grad is not None and txt.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fusion.parameters())


@pytest.mark.parametrize("kind", ["concat", "late"])
def test_single_modality_fusion_ignores_the_empty_input(kind: str) -> None:
    fusion = Fusion(kind, image_dim=0, text_dim=8, n_out=3, hidden=0, dropout=0.0)
    assert fusion(torch.zeros(2, 0), torch.randn(2, 8)).shape == (2, 3)


def test_align_and_cross_need_both_modalities() -> None:
    with pytest.raises(ValueError):
        Fusion("cross", image_dim=0, text_dim=8, n_out=3)


def test_fusion_head_standardises_with_fitted_buffers_and_adds_harmful_logit() -> None:
    head = FusionHead(4, 3, n_labels=22, harmful=True, kind="concat", hidden=0, dropout=0.0)
    img, txt = torch.randn(10, 4) * 5 + 3, torch.randn(10, 3)
    head.fit_normalisation(img, txt)
    assert torch.allclose(head.img_mean, img.mean(0))
    assert head(img, txt).shape == (10, 23)
    assert "img_mean" in head.state_dict()  # travels with the checkpoint and the ONNX graph


def test_focal_loss_matches_hand_computed_value() -> None:
    # logit 0 → p = 0.5 for a positive: CE = ln 2, (1-p_t)^2 = 0.25, alpha_t = 0.25.
    # logit ln 3 → p = 0.75 for a negative: CE = ln 4, (1-p_t)^2 = 0.75^2, alpha_t = 0.75.
    logits = torch.tensor([[0.0, math.log(3.0)]])
    targets = torch.tensor([[1.0, 0.0]])
    expected = (0.25 * 0.25 * math.log(2.0) + 0.75 * 0.5625 * math.log(4.0)) / 2
    got = FocalLoss(gamma=2.0, alpha=0.25)(logits, targets).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_focal_loss_with_gamma_zero_and_no_alpha_is_bce() -> None:
    logits, targets = torch.randn(4, 22), (torch.rand(4, 22) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert FocalLoss(gamma=0.0, alpha=-1)(logits, targets).item() == pytest.approx(bce.item(), rel=1e-6)


def test_positive_weights_soften_imbalance_and_weighted_bce_uses_them() -> None:
    y = torch.zeros(100, 2)
    y[:50, 0] = 1
    y[:4, 1] = 1
    w = positive_weights(y, power=0.5)
    assert w[0].item() == pytest.approx(1.0)
    assert w[1].item() == pytest.approx(math.sqrt(96 / 4))
    loss_w = WeightedBCE(w)(torch.zeros(100, 2), y).item()
    assert loss_w > WeightedBCE(None)(torch.zeros(100, 2), y).item()


def test_threshold_tuning_finds_the_separating_threshold_per_label() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((200, 3)) > 0.6).astype(np.float32)
    # Label 0 separable at 0.3, label 1 at 0.7, label 2 noise.
    probs = np.stack([np.where(y[:, 0] > 0, 0.4, 0.2), np.where(y[:, 1] > 0, 0.8, 0.6), rng.random(200)], axis=1).astype(
        np.float32
    )
    th = tune_thresholds(probs, y, "micro")
    assert 0.2 < th[0] <= 0.4
    assert 0.6 < th[1] <= 0.8
    pred = binarize(probs, th)
    assert micro_f1(y[:, :2], pred[:, :2]) == 1.0
    assert micro_f1(y, pred) >= micro_f1(y, binarize(probs, 0.5))


def test_metrics_match_scikit_learn_on_a_small_case() -> None:
    y_true = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0]])
    y_pred = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [1, 0, 0, 0]])
    assert micro_f1(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, average="micro", zero_division=1))
    assert macro_f1(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=1))
    # By hand: TP 3, FP 1, FN 2 → micro 6/9; label 3 absent and never predicted scores 1.0 in macro.
    assert micro_f1(y_true, y_pred) == pytest.approx(6 / 9)
    assert macro_f1(y_true, y_pred) == pytest.approx((1.0 + 2 / 3 + 0.0 + 1.0) / 4)
    assert summary(y_true, y_pred)["exact_match"] == 0.0  # no row is entirely right
    assert summary(y_true, y_true)["exact_match"] == 1.0


def test_top3_constant_baseline_picks_the_most_frequent_labels() -> None:
    y = np.array([[1, 1, 0, 1, 0], [1, 0, 0, 1, 1], [1, 1, 0, 0, 0]])
    assert top_k_constant(y, 2).tolist() == [[1, 1, 0, 1, 0]] * 2
