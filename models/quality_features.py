"""Richer frozen MPNet features for the quality sweep, from one forward pass over the 750 pool memes.

Per layer 1..12: masked mean and masked max of the hidden states (each L2-normalised, as `mean_layers`), the
token states of a few layers (fp16, ragged: for label-attention heads), and the same pooled views of the 22
technique names + descriptions (label embeddings). Stored under `<MEMEGUARD_CACHE_DIR>/quality/`, keyed by the
sha256 of every text and of the tokenizer, so a re-run reuses it.
"""

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.data import Meme
from models.encoders.hf_text import HFTextEncoder
from models.paths import feature_cache_dir
from models.preprocess import TextTokenizer
from schemas.techniques import TECHNIQUE_DESCRIPTIONS, TECHNIQUES

TOKEN_LAYERS = (3, 6)


def masked_max(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden.masked_fill(mask.unsqueeze(-1) == 0, -1e4).amax(1)


def _mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


@torch.inference_mode()
def _encode(enc: HFTextEncoder, tok: TextTokenizer, texts: list[str], batch: int = 32) -> dict[str, np.ndarray]:
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad less
    mean = np.zeros((len(texts), 12, 768), np.float32)
    mx = np.zeros_like(mean)
    tokens: dict[int, list[np.ndarray]] = {k: [None] * len(texts) for k in TOKEN_LAYERS}  # type: ignore[list-item]
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        ids, mask = tok([texts[i] for i in idx])
        hs = enc.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        for k in range(1, 13):
            mean[idx, k - 1] = nn.functional.normalize(_mean(hs[k], mask), dim=-1).numpy()
            mx[idx, k - 1] = nn.functional.normalize(masked_max(hs[k], mask), dim=-1).numpy()
        for k in TOKEN_LAYERS:
            for j, i in enumerate(idx):
                tokens[k][i] = hs[k][j, : int(mask[j].sum())].numpy().astype(np.float16)
    out = {"mean": mean, "max": mx}
    for k in TOKEN_LAYERS:
        out[f"tok{k}_len"] = np.array([len(t) for t in tokens[k]], np.int64)
        out[f"tok{k}"] = np.concatenate(tokens[k])
    return out


def label_texts() -> list[str]:
    return [f"{t}: {TECHNIQUE_DESCRIPTIONS[t]}" for t in TECHNIQUES]


def mpnet_quality_features(memes: list[Meme]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(meme features, label features) as described in the module docstring."""
    enc = HFTextEncoder("mpnet", pooling="mean_layers", layers=list(range(1, 13)), max_length=128).eval()
    tok = TextTokenizer(enc.tokenizer_file, enc.text_spec)
    h = hashlib.sha256(enc.tokenizer_file.read_bytes())
    for m in memes:
        h.update(hashlib.sha256(m.text.encode()).digest())
    h.update("\n".join(label_texts()).encode())
    path: Path = feature_cache_dir().parent / "quality" / f"mpnet-{h.hexdigest()[:20]}.npz"
    if path.is_file():
        z = np.load(path)
        memes_f = {k[2:]: z[k] for k in z.files if k.startswith("m_")}
        return memes_f, {k[2:]: z[k] for k in z.files if k.startswith("l_")}
    meme_f = _encode(enc, tok, [m.text for m in memes])
    lab_f = _encode(enc, tok, label_texts())
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".tmp.npz"), **{f"m_{k}": v for k, v in meme_f.items()},
             **{f"l_{k}": v for k, v in lab_f.items()})
    path.with_suffix(".tmp.npz").replace(path)
    return meme_f, lab_f


def token_states(feats: dict[str, np.ndarray], layer: int) -> list[np.ndarray]:
    lens = feats[f"tok{layer}_len"]
    return np.split(feats[f"tok{layer}"], np.cumsum(lens)[:-1])
