"""The run folder: everything `evaluate`, `load_for_export` and the exporters need, and nothing else."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.config import RunConfig, load_config, save_config
from models.data import Meme
from models.errors import RunError
from schemas.manifest import ImagePreprocessing, TextPreprocessing

CONFIG, METRICS, THRESHOLDS, CHECKPOINT = "config.yaml", "metrics.json", "thresholds.json", "checkpoint.pt"
PREPROCESSING, TOKENIZER, RUN_INFO = "preprocessing.json", "tokenizer/tokenizer.json", "run.json"
TRAINING_POOL = "training_pool.json"  # read by `memeguard evaluate` / `replay` (consumer.evaluate.run.TrainingPool)


@dataclass
class RunFiles:
    config: RunConfig
    labels: list[str]
    thresholds: np.ndarray
    harmful_threshold: float | None
    metrics: dict[str, float]
    image_spec: ImagePreprocessing
    text_spec: TextPreprocessing
    unused_inputs: list[str]
    info: dict[str, Any]


def write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def save_run(
    run_dir: Path,
    config: RunConfig,
    labels: list[str],
    thresholds: np.ndarray,
    metrics: dict[str, float],
    checkpoint: dict[str, Any],
    image_spec: ImagePreprocessing,
    text_spec: TextPreprocessing,
    tokenizer_file: Path | None,
    unused_inputs: list[str],
    info: dict[str, Any],
    harmful_threshold: float | None = None,
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / CONFIG)
    th: dict[str, Any] = {"labels": labels, "thresholds": [round(float(t), 4) for t in thresholds]}
    if harmful_threshold is not None:
        th["harmful_threshold"] = harmful_threshold
    write_json(run_dir / THRESHOLDS, th)
    write_json(run_dir / METRICS, {k: round(float(v), 4) for k, v in metrics.items()})
    write_json(
        run_dir / PREPROCESSING,
        {
            "image": image_spec.model_dump(mode="json"),
            "text": text_spec.model_dump(mode="json"),
            "unused_inputs": unused_inputs,
        },
    )
    write_json(run_dir / RUN_INFO, info)
    if tokenizer_file is not None:
        (run_dir / TOKENIZER).parent.mkdir(exist_ok=True)
        (run_dir / TOKENIZER).write_bytes(tokenizer_file.read_bytes())
    torch.save(checkpoint, run_dir / CHECKPOINT)


def save_training_pool(run_dir: Path, splits: list[str], memes: list[Meme]) -> None:
    """The content hashes of every meme the final model was fitted on, so serving-side reports can say
    which of the memes they score the model has seen. Same hash as the worker's de-duplication key."""
    from consumer.core.hashing import content_hash  # the definition the verdicts' content_hash uses

    hashes = sorted({content_hash(m.image.read_bytes(), m.text) for m in memes})
    write_json(run_dir / TRAINING_POOL, {
        "splits": list(splits),
        "n_memes": len(memes),
        "hash": "consumer.core.hashing.content_hash: sha256(sha256(image bytes) + NFKC-casefolded text)",
        "content_hashes": hashes,
    })


def read_run(run_dir: Path) -> RunFiles:
    missing = [f for f in (CONFIG, METRICS, THRESHOLDS, PREPROCESSING) if not (run_dir / f).is_file()]
    if missing:
        raise RunError(f"Run folder {run_dir} lacks {missing}; train it with `python -m models.cli train CONFIG`.")
    th = json.loads((run_dir / THRESHOLDS).read_text())
    pre = json.loads((run_dir / PREPROCESSING).read_text())
    info_path = run_dir / RUN_INFO
    return RunFiles(
        config=load_config(run_dir / CONFIG),
        labels=list(th["labels"]),
        thresholds=np.asarray(th["thresholds"], dtype=np.float32),
        harmful_threshold=th.get("harmful_threshold"),
        metrics={k: float(v) for k, v in json.loads((run_dir / METRICS).read_text()).items()},
        image_spec=ImagePreprocessing(**pre["image"]),
        text_spec=TextPreprocessing(**pre["text"]),
        unused_inputs=list(pre.get("unused_inputs", [])),
        info=json.loads(info_path.read_text()) if info_path.is_file() else {},
    )


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise RunError(f"Run folder {run_dir} has no {CHECKPOINT}; it is not a neural run or training was cut short.")
    return torch.load(path, map_location="cpu", weights_only=False)
