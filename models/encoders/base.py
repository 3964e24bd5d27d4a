"""The two encoder interfaces every fusion model is built from.

Each encoder knows its preprocessing (`image_spec` / `text_spec` + tokenizer file) so a run folder can hand
serving exactly what training used, and a `cache_key` so frozen features can be cached on disk.
"""

from pathlib import Path

import torch
from torch import nn

from schemas.manifest import ImagePreprocessing, TextPreprocessing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


class ImageEncoder(nn.Module):
    """pixel_values float32 [B,3,S,S] → features float32 [B, out_dim]."""

    out_dim: int
    image_spec: ImagePreprocessing
    cache_key: str

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class TextEncoder(nn.Module):
    """(input_ids int64 [B,L], attention_mask int64 [B,L]) → features float32 [B, out_dim]."""

    out_dim: int
    text_spec: TextPreprocessing
    tokenizer_file: Path
    cache_key: str

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens only (sentence-transformers' pooling), safe for an all-padding row."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
