"""Feature-text training data: enrichment rows (from `python -m consumer.enrich.extract`) joined
with SemEval-2021 task 6 technique labels.

Four text views per meme, so the report can say what the visual features add:
  feature_caption  the published recipe over the meme's own caption (what a worker builds when an
                   event carries text)
  feature_ocr      the same recipe over what OCR read (an event without text)
  caption_only     the caption alone (text-only baseline)
  ocr_only         OCR text alone
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas.enrichment import Enrichment
from schemas.techniques import TECHNIQUES

VIEWS = ("feature_caption", "feature_ocr", "caption_only", "ocr_only")


@dataclass(frozen=True)
class FeatureSet:
    ids: list[str]
    split: list[str]  # "train" | "dev", from the manifest the meme came from
    texts: dict[str, list[str]]  # view -> one string per meme
    y: np.ndarray  # [N, 22] multi-hot in TECHNIQUES order


def multi_hot(labels: list[list[str]]) -> np.ndarray:
    index = {t: i for i, t in enumerate(TECHNIQUES)}
    y = np.zeros((len(labels), len(TECHNIQUES)), np.int64)
    for row, labs in enumerate(labels):
        for lab in labs:
            y[row, index[lab]] = 1
    return y


def load(features_jsonl: Path, manifests: dict[str, Path]) -> FeatureSet:
    """`manifests` maps a split name to its SemEval JSON; memes without an enrichment row are an error
    (run the extractor again: it resumes)."""
    rows = {}
    for line in features_jsonl.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["id"]] = row
    ids, split, labels = [], [], []
    texts: dict[str, list[str]] = {v: [] for v in VIEWS}
    missing = []
    for name, path in manifests.items():
        for meme in json.loads(path.read_text()):
            mid = str(meme["id"])
            if mid not in rows:
                missing.append(mid)
                continue
            ocr = Enrichment.model_validate(rows[mid]["ocr"])
            cap = Enrichment.model_validate(rows[mid]["caption"])
            ids.append(mid)
            split.append(name)
            labels.append(meme["labels"])
            caption = " ".join(str(meme.get("text", "")).split())
            ocr_text = " ".join((ocr.ocr.text if ocr.ocr else "").split())
            texts["feature_caption"].append(cap.feature_text or "")
            texts["feature_ocr"].append(ocr.feature_text or "")
            texts["caption_only"].append(caption)
            texts["ocr_only"].append(ocr_text)
    if missing:
        raise SystemExit(
            f"{len(missing)} memes have no enrichment row in {features_jsonl} (e.g. {missing[:3]}); "
            "run `python -m consumer.enrich.extract` again, it resumes where it stopped."
        )
    return FeatureSet(ids=ids, split=split, texts=texts, y=multi_hot(labels))
