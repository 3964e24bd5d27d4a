"""Fine-tune a Hugging Face sequence classifier (BERT, RoBERTa, Qwen2, ...) on the feature text,
multi-label over the 22 techniques, as the published pipeline did (it fine-tuned BERT, RoBERTa and
Qwen2.5-0.5B on the combined feature string). Weights must already be on disk (HF_HUB_OFFLINE):

    python -m models.features.hf_classifier --model-dir /path/to/roberta-base --epochs 10

Tests run the same code on tiny randomly initialised configs of each architecture.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from models.features.dataset import load
from models.paths import cache_dir, semeval_dir
from schemas.techniques import TECHNIQUES
from scoring.metrics import macro_f1, micro_f1

Classifier = tuple[PreTrainedModel, PreTrainedTokenizerBase]


def from_pretrained(model_dir: Path) -> Classifier:
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"{model_dir} holds no config.json; point --model-dir at a checkpoint on disk.")
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir,
        num_labels=len(TECHNIQUES),
        problem_type="multi_label_classification",
        local_files_only=True,
    )
    return prepare(model, tok)


def from_config(config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase) -> Classifier:
    """A randomly initialised classifier of the config's architecture (tests, smoke runs)."""
    config.num_labels = len(TECHNIQUES)
    config.problem_type = "multi_label_classification"
    model = AutoModelForSequenceClassification.from_config(config)
    return prepare(model, tokenizer)


def prepare(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> Classifier:
    # Decoder-only models (Qwen) have no pad token; the classifier pools the last non-pad token, so
    # it must know which id is padding.
    if getattr(tok, "pad_token", None) is None:
        tok.pad_token = tok.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return model, tok


def batches(n: int, size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i : i + size] for i in range(0, n, size)]


def train(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    texts: Sequence[str],
    y: np.ndarray,
    epochs: int = 5,
    lr: float = 2e-5,
    batch_size: int = 16,
    max_length: int = 128,
    seed: int = 0,
) -> list[float]:
    """AdamW with weight decay 0.01 (the published settings); returns the mean loss per epoch."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    losses = []
    for _ in range(epochs):
        total = 0.0
        for idx in batches(len(texts), batch_size, rng):
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            out = model(**enc, labels=torch.as_tensor(y[idx], dtype=torch.float32))
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            total += float(out.loss.detach()) * len(idx)
        losses.append(total / len(texts))
    return losses


@torch.no_grad()
def predict(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 32, max_length: int = 128
) -> np.ndarray:
    model.eval()
    out = []
    for idx in batches(len(texts), batch_size, None):
        enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        out.append(torch.sigmoid(model(**enc).logits).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(TECHNIQUES)), np.float32)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description="Fine-tune a HF sequence classifier on the feature text.")
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--features", type=Path, default=cache_dir() / "enrich" / "semeval_features.jsonl")
    ap.add_argument("--view", default="feature_caption")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--threshold", type=float, default=0.3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    data = load(args.features, {"train": semeval_dir() / "train.json", "dev": semeval_dir() / "dev.json"})
    is_dev = np.asarray([s == "dev" for s in data.split])
    texts = np.asarray(data.texts[args.view], dtype=object)
    model, tok = from_pretrained(args.model_dir)
    losses = train(model, tok, list(texts[~is_dev]), data.y[~is_dev], epochs=args.epochs, lr=args.lr)
    pred = predict(model, tok, list(texts[is_dev])) >= args.threshold
    report = {
        "model_dir": str(args.model_dir),
        "view": args.view,
        "losses": losses,
        "dev_micro_f1": micro_f1(data.y[is_dev], pred),
        "dev_macro_f1": macro_f1(data.y[is_dev], pred),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
