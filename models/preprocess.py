"""The one training-side preprocessing; `consumer/core/preprocess.py` re-implements it in numpy and must match.

Image: decode by content (Pillow) → RGB → squash-resize to S×S (bilinear) → /255 → (x-mean)/std → CHW.
Text: `tokenizers.Tokenizer` from `tokenizer.json`, truncation at max_length, padding to the batch's longest.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer

from models.errors import DataError
from schemas.manifest import ImagePreprocessing, TextPreprocessing


def load_image(path: Path) -> Image.Image:
    """Decode by content: most SemEval files are JPEG bytes named `.png`, Pillow sniffs the format."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise DataError(f"Image {path} cannot be decoded ({e}); check the file or remove the meme.") from e


def image_to_array(image: Image.Image, spec: ImagePreprocessing) -> np.ndarray:
    """PIL image → float32 [3, S, S]."""
    resized = image.convert("RGB").resize((spec.size, spec.size), Image.BILINEAR)
    x = np.asarray(resized, dtype=np.float32) / 255.0
    x = (x - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def images_to_tensor(images: Sequence[Image.Image], spec: ImagePreprocessing) -> torch.Tensor:
    return torch.from_numpy(np.stack([image_to_array(im, spec) for im in images]))


class TextTokenizer:
    """Wraps a fast tokenizer file exactly as serving does (same truncation and padding settings)."""

    def __init__(self, tokenizer_file: Path, spec: TextPreprocessing) -> None:
        self.spec = spec
        self.tokenizer_file = tokenizer_file
        self._tok = Tokenizer.from_file(str(tokenizer_file))
        self._tok.enable_truncation(max_length=spec.max_length)
        self._tok.enable_padding()

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (input_ids int64 [B, L], attention_mask int64 [B, L])."""
        prepared = [t.lower() if self.spec.lowercase else t for t in texts]
        enc = self._tok.encode_batch(prepared)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.int64)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.int64)
        return ids, mask
