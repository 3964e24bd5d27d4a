"""The whole inference graph: encoders + an ensemble of fusion heads, with serving's three inputs."""

import torch
from torch import nn

from models.encoders.base import ImageEncoder, TextEncoder
from models.fusion import FusionHead
from models.harm import HarmHead


class MemeClassifier(nn.Module):
    """forward(pixel_values, input_ids, attention_mask) → technique probs [B,22] (+ harmful prob [B]).

    Single-modality configs still take all three inputs and ignore the unused one, so serving has one
    interface. Several heads (seeds) are averaged in probability space.
    """

    def __init__(
        self,
        image_encoder: ImageEncoder | None,
        text_encoder: TextEncoder | None,
        heads: list[FusionHead],
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.heads = nn.ModuleList(heads)
        self.has_harmful_head = heads[0].harmful
        # The harm head (HarMeme, text only) reads the same text features; set by training, None otherwise.
        self.harm_head: HarmHead | None = None

    def attach_harm_head(self, head: HarmHead) -> None:
        if self.has_harmful_head or self.text_encoder is None:
            raise ValueError("a harm head needs a text encoder and no fused binary column")
        self.harm_head = head

    @property
    def image_dim(self) -> int:
        return self.image_encoder.out_dim if self.image_encoder is not None else 0

    @property
    def text_dim(self) -> int:
        return self.text_encoder.out_dim if self.text_encoder is not None else 0

    def encode(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = input_ids.shape[0]
        if self.image_encoder is not None:
            img = self.image_encoder(pixel_values)
        else:
            img = pixel_values.new_zeros(batch, 0)
        if self.text_encoder is not None:
            txt = self.text_encoder(input_ids, attention_mask)
        else:
            txt = pixel_values.new_zeros(batch, 0)
        return img, txt

    def head_logits(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """Logits of the first head (training runs one head per seed)."""
        return self.heads[0](img, txt)

    def probs_from_features(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.sigmoid(h(img, txt)) for h in self.heads]).mean(0)

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        img, txt = self.encode(pixel_values, input_ids, attention_mask)
        probs = self.probs_from_features(img, txt)
        if self.harm_head is not None:
            return (probs, *self.harm_head(txt, input_ids, attention_mask))
        if self.has_harmful_head:
            n = self.heads[0].n_labels
            return probs[:, :n], probs[:, n]
        return probs
