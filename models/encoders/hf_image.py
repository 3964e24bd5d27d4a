"""Transformers image encoders: CLIP vision (projected), ViT and DINOv2 (CLS token), ResNet50 (pooled)."""

from typing import Any

import torch
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    Dinov2Model,
    ResNetConfig,
    ResNetModel,
    ViTConfig,
    ViTModel,
)

from models.encoders.base import CLIP_MEAN, CLIP_STD, HALF, IMAGENET_MEAN, IMAGENET_STD, ImageEncoder
from models.encoders.hub import load_pretrained
from models.errors import ConfigError
from schemas.manifest import ImagePreprocessing

_ARCHS: dict[str, tuple[Any, Any, tuple[float, ...], tuple[float, ...]]] = {
    "clip": (CLIPVisionModelWithProjection, CLIPVisionConfig, CLIP_MEAN, CLIP_STD),
    "vit": (ViTModel, ViTConfig, HALF, HALF),  # google/vit-*-in21k normalise to [-1, 1]
    "dinov2": (Dinov2Model, Dinov2Config, IMAGENET_MEAN, IMAGENET_STD),
    "resnet": (ResNetModel, ResNetConfig, IMAGENET_MEAN, IMAGENET_STD),
}


class HFImageEncoder(ImageEncoder):
    def __init__(self, name_or_path: str, arch: str, size: int = 224, tiny: dict[str, Any] | None = None) -> None:
        super().__init__()
        if arch not in _ARCHS:
            raise ConfigError(f"image_encoder.arch must be one of {sorted(_ARCHS)}, not {arch!r}.")
        model_cls, config_cls, mean, std = _ARCHS[arch]
        if tiny:
            cfg = dict(tiny)
            if arch in ("clip", "vit", "dinov2"):
                cfg.setdefault("image_size", size)
            self.model = model_cls(config_cls(**cfg))
        else:
            self.model = load_pretrained(model_cls, name_or_path, "image_encoder")
        self.arch = arch
        c = self.model.config
        if arch == "clip":
            self.out_dim = int(c.projection_dim)
        elif arch == "resnet":
            self.out_dim = int(c.hidden_sizes[-1])
        else:
            self.out_dim = int(c.hidden_size)
        self.image_spec = ImagePreprocessing(size=size, mean=mean, std=std)
        origin = f"tiny{sorted(tiny.items())}" if tiny else name_or_path
        self.cache_key = f"hf-image-{arch}-{origin}-{size}"

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values)
        if self.arch == "clip":
            return out.image_embeds
        if self.arch == "resnet":
            return out.pooler_output.flatten(1)
        return out.last_hidden_state[:, 0]
