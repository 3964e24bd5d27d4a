"""Fine-tuning mode: encoders and heads trained end to end (GPUs; small scratch models on CPU).

Early stopping on validation micro-F1 (at the best single threshold, cheap and monotone enough to
select an epoch); the best epoch's weights are restored.
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from models.config import RunConfig
from models.metrics import micro_f1
from models.network import MemeClassifier
from models.optim import balanced_indices, joint_loss, make_loss, make_optimizer, make_scheduler


@dataclass
class Inputs:
    """Preprocessed tensors of every meme, built once per run (no augmentation re-decoding per epoch)."""

    pixels: torch.Tensor  # [N,3,S,S] (S=1 dummy when the config has no image encoder)
    ids: torch.Tensor  # [N,L]
    mask: torch.Tensor  # [N,L]

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.pixels[idx], self.ids[idx], self.mask[idx]


def _param_groups(model: MemeClassifier, cfg: RunConfig) -> list[dict[str, object]]:
    """Pretrained encoders move at `encoder_lr` (small steps keep their knowledge); the rest at `lr`."""
    pretrained = {
        "image_encoder": cfg.image_encoder.kind in ("hf", "efficientnet_lite0"),
        "text_encoder": cfg.text_encoder.kind == "hf",
    }
    groups: list[dict[str, object]] = [{"params": list(model.heads.parameters())}]
    for name in ("image_encoder", "text_encoder"):
        enc = getattr(model, name)
        if name == "image_encoder" and enc is not None and cfg.image_encoder.frozen:
            enc.requires_grad_(False)
            continue
        if enc is not None:
            lr = cfg.training.encoder_lr if pretrained[name] else cfg.training.lr
            groups.append({"params": list(enc.parameters()), "lr": lr})
    return groups


@torch.inference_mode()
def predict_e2e(model: MemeClassifier, inputs: Inputs, idx: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    model.eval()
    outs = []
    for start in range(0, len(idx), batch_size):
        img, txt = model.encode(*inputs.take(idx[start : start + batch_size]))
        outs.append(model.probs_from_features(img, txt))
    return torch.cat(outs).numpy()


def _best_threshold_f1(y: np.ndarray, probs: np.ndarray) -> float:
    return max(micro_f1(y, (probs >= t).astype(int)) for t in np.arange(0.1, 0.91, 0.05))


def fit_end_to_end(
    cfg: RunConfig,
    make_model: Callable[[], MemeClassifier],
    inputs: Inputs,
    y: np.ndarray,
    harmful: np.ndarray | None,
    train_idx: np.ndarray,
    val_idx: np.ndarray | None,
    epochs: int | None = None,
) -> MemeClassifier:
    t = cfg.training
    torch.manual_seed(t.seeds[0])
    gen = torch.Generator().manual_seed(t.seeds[0])
    model = make_model()
    y_t = torch.as_tensor(y, dtype=torch.float32)
    h_t = None if harmful is None else torch.as_tensor(harmful, dtype=torch.float32)
    n_labels = y.shape[1]
    tr = torch.as_tensor(train_idx)
    loss_fn = make_loss(cfg.loss, y_t[tr])
    opt = make_optimizer(_param_groups(model, cfg), t)
    n_epochs = epochs if epochs is not None else t.epochs
    sched = make_scheduler(opt, t, n_epochs * -(-len(tr) // t.batch_size))
    best_score, best_state, stale = -1.0, None, 0
    for _ in tqdm(range(n_epochs), desc="epochs", unit="epoch", leave=False):
        model.train()
        if cfg.image_encoder.frozen and model.image_encoder is not None:
            model.image_encoder.eval()  # frozen also means BatchNorm statistics stay as pretrained
        idx = tr
        if t.downsample and h_t is not None:
            idx = tr[balanced_indices(h_t[tr], gen)]
        idx = idx[torch.randperm(len(idx), generator=gen)]
        for start in range(0, len(idx), t.batch_size):
            b = idx[start : start + t.batch_size]
            logits = model.head_logits(*model.encode(*inputs.take(b)))
            loss = joint_loss(loss_fn, logits, y_t[b], None if h_t is None else h_t[b], n_labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if val_idx is None or len(val_idx) == 0:
            continue
        va = torch.as_tensor(val_idx)
        score = _best_threshold_f1(y[val_idx], predict_e2e(model, inputs, va)[:, :n_labels])
        if score > best_score:
            best_score, best_state, stale = score, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= t.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model
