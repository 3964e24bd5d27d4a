"""Frozen-encoder mode: train fusion heads on cached features (minutes on a CPU, not hours)."""

import numpy as np
import torch

from models.config import RunConfig
from models.fusion import FusionHead
from models.optim import balanced_indices, joint_loss, make_loss, make_optimizer, make_scheduler


def make_head(cfg: RunConfig, image_dim: int, text_dim: int, n_labels: int, harmful: bool) -> FusionHead:
    h = cfg.head
    return FusionHead(
        image_dim,
        text_dim,
        n_labels,
        harmful,
        image_weight=h.image_weight,
        kind=h.fusion,
        hidden=h.hidden,
        proj_dim=h.proj_dim,
        cross_dim=h.cross_dim,
        dropout=h.dropout,
    )


def fit_heads(
    cfg: RunConfig,
    img: np.ndarray,
    txt: np.ndarray,
    y: np.ndarray,
    harmful: np.ndarray | None = None,
    epochs: int | None = None,
) -> list[FusionHead]:
    """One head per seed in `training.seeds` (an ensemble when there are several)."""
    threads = torch.get_num_threads()
    # Heads are small matmuls: extra threads only add synchronisation, which on a shared, loaded CPU
    # made a 10 s fit take minutes. Encoders (feature extraction) keep `training.threads`.
    torch.set_num_threads(1)
    try:
        return _fit_heads(cfg, img, txt, y, harmful, epochs)
    finally:
        torch.set_num_threads(threads)


def _fit_heads(
    cfg: RunConfig,
    img: np.ndarray,
    txt: np.ndarray,
    y: np.ndarray,
    harmful: np.ndarray | None,
    epochs: int | None,
) -> list[FusionHead]:
    t = cfg.training
    x_img, x_txt, y_t = (torch.as_tensor(a, dtype=torch.float32) for a in (img, txt, y))
    h_t = None if harmful is None else torch.as_tensor(harmful, dtype=torch.float32)
    n_epochs = epochs if epochs is not None else t.epochs
    heads = []
    for seed in t.seeds:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        head = make_head(cfg, x_img.shape[1], x_txt.shape[1], y_t.shape[1], h_t is not None)
        head.fit_normalisation(x_img, x_txt)
        loss_fn = make_loss(cfg.loss, y_t)
        if t.optimizer == "lbfgs":
            heads.append(_fit_full_batch(head, loss_fn, x_img, x_txt, y_t, h_t, t.weight_decay, n_epochs))
            continue
        opt = make_optimizer([{"params": head.parameters()}], t)
        n = len(y_t)
        steps = n_epochs * -(-n // t.batch_size)
        sched = make_scheduler(opt, t, steps)
        head.train()
        for _ in range(n_epochs):
            idx = balanced_indices(h_t, gen) if (t.downsample and h_t is not None) else torch.arange(n)
            idx = idx[torch.randperm(len(idx), generator=gen)]
            for start in range(0, len(idx), t.batch_size):
                b = idx[start : start + t.batch_size]
                logits = head(x_img[b], x_txt[b])
                loss = joint_loss(loss_fn, logits, y_t[b], None if h_t is None else h_t[b], y_t.shape[1])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        head.eval()
        heads.append(head)
    return heads


def _fit_full_batch(
    head: FusionHead,
    loss_fn: torch.nn.Module,
    x_img: torch.Tensor,
    x_txt: torch.Tensor,
    y: torch.Tensor,
    harmful: torch.Tensor | None,
    l2: float,
    iterations: int,
) -> FusionHead:
    """Full-batch L-BFGS with an explicit L2 penalty: for a linear head this is logistic regression.

    On 750 memes it converges in well under a second where mini-batch AdamW needs thousands of
    steps — what keeps CV + ensembling inside the 10-minute CPU budget. Dropout is off (deterministic).
    """
    head.eval()
    weights = [p for name, p in head.named_parameters() if name.endswith("weight")]
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=iterations, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = head(x_img, x_txt)
        loss = joint_loss(loss_fn, logits, y, harmful, y.shape[1])
        loss = loss + l2 * sum((w * w).sum() for w in weights)
        loss.backward()
        return loss

    opt.step(closure)
    return head


@torch.inference_mode()
def predict_heads(heads: list[FusionHead], img: np.ndarray, txt: np.ndarray) -> np.ndarray:
    """Mean sigmoid output of the heads: [N, 22] (+1 harmful column when the heads have it)."""
    x_img, x_txt = torch.as_tensor(img, dtype=torch.float32), torch.as_tensor(txt, dtype=torch.float32)
    return torch.stack([torch.sigmoid(h(x_img, x_txt)) for h in heads]).mean(0).numpy()
