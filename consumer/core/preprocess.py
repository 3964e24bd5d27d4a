"""Serving-side preprocessing, numpy only. Mirrors `models/preprocess.py` exactly (a test pins it)."""

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from tokenizers import Tokenizer

from schemas import ImagePreprocessing, TextPreprocessing


def image_to_tensor(image: Image.Image, spec: ImagePreprocessing, out: np.ndarray | None = None) -> np.ndarray:
    """RGB PIL image -> float32 [3, S, S], normalised as the bundle's manifest says (written into `out`, e.g.
    one row of a batch, when given). One resize, at most one conversion, then one table lookup per channel
    straight into CHW: the table holds (v / 255 - mean) / std for the 256 values of a byte, computed with the
    same float32 operations as the training side, so the result is bit-identical to it."""
    resized = _resize(image if image.mode == "RGB" else image.convert("RGB"), spec)
    pixels = np.asarray(resized)  # uint8 [S, S, 3]
    table = _normalisation_table(tuple(spec.mean), tuple(spec.std))
    if out is None:
        out = np.empty((3, spec.size, spec.size), dtype=np.float32)
    for channel in range(3):
        np.take(table[channel], pixels[:, :, channel], out=out[channel])
    return out


@lru_cache(maxsize=8)
def _normalisation_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """float32 [3, 256]: the normalised value of each byte value, per channel."""
    x = np.arange(256, dtype=np.float32) / 255.0
    table = (x[None, :] - np.asarray(mean, dtype=np.float32)[:, None]) / np.asarray(std, dtype=np.float32)[:, None]
    table.setflags(write=False)
    return table


def _resize(image: Image.Image, spec: ImagePreprocessing) -> Image.Image:
    if spec.resize_mode == "squash":
        return image.resize((spec.size, spec.size), Image.BILINEAR)
    # shorter_side_center_crop: keep the aspect ratio, scale the shorter side to `size`, crop the middle.
    w, h = image.size
    scale = spec.size / min(w, h)
    nw, nh = max(spec.size, round(w * scale)), max(spec.size, round(h * scale))
    resized = image.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - spec.size) // 2, (nh - spec.size) // 2
    return resized.crop((left, top, left + spec.size, top + spec.size))


def images_to_batch(images: Sequence[Image.Image | np.ndarray], spec: ImagePreprocessing) -> np.ndarray:
    """float32 [B, 3, S, S]. An item may already be its tensor (`ImageDecoder.decode_tensors`): it is copied
    in as it is."""
    batch = np.empty((len(images), 3, spec.size, spec.size), dtype=np.float32)
    for row, image in zip(batch, images, strict=True):
        if isinstance(image, np.ndarray):
            if image.shape != row.shape:
                raise ValueError(f"a pre-decoded image tensor is {image.shape}, the model takes {row.shape}")
            row[...] = image
        else:
            image_to_tensor(image, spec, out=row)
    return batch


class TextEncoder:
    """Tokenises a batch with the bundle's tokenizer.json; pads to the longest text in the batch."""

    def __init__(self, bundle_root: Path, spec: TextPreprocessing) -> None:
        self.spec = spec
        self._tokenizer = Tokenizer.from_file(str(bundle_root / spec.tokenizer_file))
        self._tokenizer.enable_truncation(max_length=spec.max_length)
        self._tokenizer.enable_padding()

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        prepared = [t.lower() if self.spec.lowercase else t for t in texts]
        encodings = self._tokenizer.encode_batch(prepared)
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        return {self.spec.input_ids_name: ids, self.spec.attention_mask_name: mask}
