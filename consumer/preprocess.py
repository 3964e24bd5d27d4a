"""Serving-side preprocessing, numpy only. Mirrors `models/preprocess.py` exactly (a test pins it)."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tokenizers import Tokenizer

from schemas import ImagePreprocessing, TextPreprocessing


def image_to_tensor(image: Image.Image, spec: ImagePreprocessing) -> np.ndarray:
    """RGB PIL image -> float32 [3, S, S], normalised as the bundle's manifest says."""
    resized = _resize(image.convert("RGB"), spec)
    x = np.asarray(resized, dtype=np.float32) / 255.0
    x = (x - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


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


def images_to_batch(images: Sequence[Image.Image], spec: ImagePreprocessing) -> np.ndarray:
    return np.stack([image_to_tensor(im, spec) for im in images]).astype(np.float32, copy=False)


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
