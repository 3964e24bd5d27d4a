"""Fusion of an image vector and a text vector, and the heads on top of it.

concat: [img; txt]. align: element-wise product of projected vectors (multiplicative agreement).
cross: outer product of low-rank projections, flattened (Hate-CLIPper's feature interaction matrix).
late: independent per-modality classifiers whose logits are averaged.
"""

from typing import Literal

import torch
from torch import nn

FusionKind = Literal["concat", "align", "cross", "late"]


def _mlp(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    if hidden <= 0:  # a linear probe: what worked best on 750 memes with frozen features
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
    return nn.Sequential(
        nn.Dropout(dropout / 2), nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
    )


class Fusion(nn.Module):
    """(img [B,Di], txt [B,Dt]) → logits [B, n_out]. Either input may have width 0 (single-modality configs)."""

    def __init__(
        self,
        kind: FusionKind,
        image_dim: int,
        text_dim: int,
        n_out: int,
        hidden: int = 256,
        proj_dim: int = 256,
        cross_dim: int = 32,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.use_image, self.use_text = image_dim > 0, text_dim > 0
        if kind in ("align", "cross") and not (self.use_image and self.use_text):
            raise ValueError(f"fusion '{kind}' needs both an image and a text encoder")
        if kind == "concat":
            self.head = _mlp(image_dim + text_dim, hidden, n_out, dropout)
        elif kind == "align":
            self.img_proj, self.txt_proj = nn.Linear(image_dim, proj_dim), nn.Linear(text_dim, proj_dim)
            self.head = _mlp(proj_dim, hidden, n_out, dropout)
        elif kind == "cross":
            self.img_proj, self.txt_proj = nn.Linear(image_dim, cross_dim), nn.Linear(text_dim, cross_dim)
            self.head = _mlp(cross_dim * cross_dim, hidden, n_out, dropout)
        elif kind == "late":
            self.img_head = _mlp(image_dim, hidden, n_out, dropout) if self.use_image else None
            self.txt_head = _mlp(text_dim, hidden, n_out, dropout) if self.use_text else None
        else:
            raise ValueError(f"unknown fusion kind {kind!r}")

    def forward(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        if self.kind == "concat":
            parts = [x for x, used in ((img, self.use_image), (txt, self.use_text)) if used]
            return self.head(torch.cat(parts, dim=-1))
        if self.kind == "align":
            return self.head(self.img_proj(img) * self.txt_proj(txt))
        if self.kind == "cross":
            outer = torch.einsum("bi,bj->bij", self.img_proj(img), self.txt_proj(txt))
            return self.head(outer.flatten(1))
        logits = [h(x) for h, x in ((self.img_head, img), (self.txt_head, txt)) if h is not None]
        return torch.stack(logits).mean(0)


class FusionHead(nn.Module):
    """Feature standardisation + fusion → 22 technique logits (+ 1 harmful logit when `harmful`).

    The standardisation statistics are buffers fitted on training features, so the exported graph
    carries them and serving needs nothing beyond the ONNX file.
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        n_labels: int,
        harmful: bool,
        image_weight: float = 1.0,
        **fusion_kw: object,
    ) -> None:
        super().__init__()
        self.n_labels, self.harmful = n_labels, harmful
        # <1 shrinks standardised image features so a shared L2 penalty regularises them harder:
        # ImageNet features are weak evidence for persuasion techniques (see docs/models.md).
        self.image_weight = image_weight
        self.register_buffer("img_mean", torch.zeros(image_dim))
        self.register_buffer("img_std", torch.ones(image_dim))
        self.register_buffer("txt_mean", torch.zeros(text_dim))
        self.register_buffer("txt_std", torch.ones(text_dim))
        self.fusion = Fusion(image_dim=image_dim, text_dim=text_dim, n_out=n_labels + int(harmful), **fusion_kw)

    def fit_normalisation(self, img: torch.Tensor, txt: torch.Tensor) -> None:
        for x, mean, std in ((img, self.img_mean, self.img_std), (txt, self.txt_mean, self.txt_std)):
            if x.shape[1]:
                mean.copy_(x.mean(0))
                std.copy_(x.std(0).clamp_min(1e-3))

    def forward(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        img = (img - self.img_mean) / self.img_std * self.image_weight
        return self.fusion(img, (txt - self.txt_mean) / self.txt_std)
