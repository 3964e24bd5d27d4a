"""Dataset loaders: SemEval-2021 Task 6 (multi-label techniques) and Hateful Memes jsonl (binary)."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.errors import DataError
from models.paths import semeval_dir
from schemas.techniques import TECHNIQUES


@dataclass(frozen=True)
class Meme:
    """One labelled meme. `labels` are technique names; `harmful` is None where the dataset has no binary label."""

    id: str
    text: str
    image: Path
    labels: tuple[str, ...] = field(default_factory=tuple)
    harmful: int | None = None


def _read_json(path: Path) -> object:
    if not path.is_file():
        raise DataError(f"Dataset file {path} does not exist; set MEMEGUARD_DATA_DIR to the folder holding it.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"Dataset file {path} is not valid JSON ({e}); restore it from the shared data.") from e


def load_semeval(path: Path) -> list[Meme]:
    """A SemEval-2021 Task 6 subtask-3 file: `[{"id","text","image","labels"}]`, images beside it."""
    raw = _read_json(path)
    if not isinstance(raw, list):
        raise DataError(f"Dataset file {path} must hold a JSON list of memes.")
    known = set(TECHNIQUES)
    memes = []
    for row in raw:
        unknown = [lab for lab in row.get("labels", []) if lab not in known]
        if unknown:
            raise DataError(f"Meme {row.get('id')} in {path} has unknown technique(s) {unknown}.")
        memes.append(
            Meme(
                id=str(row["id"]),
                text=str(row.get("text", "")),
                image=path.parent / "images" / str(row["image"]),
                labels=tuple(row.get("labels", [])),
            )
        )
    return memes


def load_hateful_jsonl(path: Path) -> list[Meme]:
    """Hateful Memes format: one `{"id","img","label","text"}` per line, `img` relative to the file's folder.

    The images of that dataset are not shipped here; tests exercise this loader on a generated set.
    """
    if not path.is_file():
        raise DataError(f"Hateful Memes file {path} does not exist; pass the path of train.jsonl/dev.jsonl.")
    memes = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            label = row.get("label")
            memes.append(
                Meme(
                    id=str(row["id"]),
                    text=str(row.get("text", "")),
                    image=path.parent / str(row["img"]),
                    harmful=None if label is None else int(label),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"Line {n} of {path} is not a Hateful Memes record ({e}).") from e
    return memes


def load_dataset(name_or_path: str) -> list[Meme]:
    """`train`/`dev` name the shipped SemEval splits; any other value is a path (.json SemEval, .jsonl Hateful)."""
    if name_or_path in ("train", "dev"):
        return load_semeval(semeval_dir() / f"{name_or_path}.json")
    path = Path(name_or_path)
    if path.suffix == ".jsonl":
        return load_hateful_jsonl(path)
    return load_semeval(path)


def multi_hot(memes: list[Meme], labels: tuple[str, ...] = TECHNIQUES) -> np.ndarray:
    """[N, 22] float32 targets in the official label order."""
    index = {lab: i for i, lab in enumerate(labels)}
    y = np.zeros((len(memes), len(labels)), dtype=np.float32)
    for row, meme in enumerate(memes):
        for lab in meme.labels:
            y[row, index[lab]] = 1.0
    return y


def harmful_targets(memes: list[Meme]) -> np.ndarray | None:
    """[N] float32 binary targets, or None when no meme carries one."""
    if all(m.harmful is None for m in memes):
        return None
    return np.asarray([float(m.harmful or 0) for m in memes], dtype=np.float32)
