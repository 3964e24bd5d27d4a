"""On-disk cache of frozen-encoder features, keyed by encoder and by content hash of each input.

Frozen encoders dominate CPU training time (≈47 ms per image); caching makes a re-run of a head
seconds instead of minutes, and content hashes (not ids) keep it valid if a dataset file changes.
"""

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from models.data import Meme
from models.encoders.base import ImageEncoder, TextEncoder
from models.paths import feature_cache_dir
from models.preprocess import TextTokenizer, images_to_tensor, load_image

ImageTransform = Callable[[Image.Image], Image.Image]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _store_path(cache_key: str) -> Path:
    return feature_cache_dir() / f"{_digest(cache_key.encode())[:24]}.pt"


def _load_store(path: Path) -> dict[str, torch.Tensor]:
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except (RuntimeError, OSError, EOFError):
            path.unlink()  # a half-written cache from a killed run: recompute rather than crash
    return {}


def _save_store(path: Path, store: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(store, tmp)
    tmp.replace(path)  # atomic: a concurrent reader never sees a partial file


def _gather(
    keys: Sequence[str],
    cache_key: str,
    compute: Callable[[list[int]], torch.Tensor],
    batch_size: int,
    desc: str,
    sort_key: Callable[[int], int] | None = None,
) -> np.ndarray:
    path = _store_path(cache_key)
    store = _load_store(path)
    missing = [i for i, k in enumerate(keys) if k not in store]
    if sort_key is not None:
        # Batches of similar length pad less: MPNet over the 750 memes ran about twice as fast sorted.
        missing.sort(key=sort_key)
    if missing:
        for start in tqdm(range(0, len(missing), batch_size), desc=desc, unit="batch", leave=False):
            chunk = missing[start : start + batch_size]
            feats = compute(chunk)
            for i, f in zip(chunk, feats, strict=True):
                store[keys[i]] = f.float().clone()
        _save_store(path, store)
    return torch.stack([store[k] for k in keys]).numpy()


@torch.inference_mode()
def image_features(
    encoder: ImageEncoder,
    memes: Sequence[Meme],
    transform: ImageTransform | None = None,
    transform_key: str = "",
    batch_size: int = 16,
) -> np.ndarray:
    """[N, D] features of each meme's image (after `transform`, e.g. text inpainting)."""
    encoder.eval()
    keys = [_digest(m.image.read_bytes()) for m in memes]

    def compute(idx: list[int]) -> torch.Tensor:
        ims = [load_image(memes[i].image) for i in idx]
        if transform is not None:
            ims = [transform(im) for im in ims]
        return encoder(images_to_tensor(ims, encoder.image_spec))

    return _gather(keys, f"{encoder.cache_key}|{transform_key}", compute, batch_size, "image features")


@torch.inference_mode()
def text_features(encoder: TextEncoder, memes: Sequence[Meme], batch_size: int = 32) -> np.ndarray:
    """[N, D] features of each meme's text, tokenised exactly as serving will."""
    encoder.eval()
    tok = TextTokenizer(encoder.tokenizer_file, encoder.text_spec)
    tok_digest = _digest(encoder.tokenizer_file.read_bytes())[:12]
    keys = [_digest(m.text.encode("utf-8")) for m in memes]

    def compute(idx: list[int]) -> torch.Tensor:
        ids, mask = tok([memes[i].text for i in idx])
        return encoder(ids, mask)

    return _gather(keys, f"{encoder.cache_key}|{tok_digest}", compute, batch_size, "text features",
                   sort_key=lambda i: len(memes[i].text))
