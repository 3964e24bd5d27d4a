"""`memeguard evaluate`: run a bundle through the serving runtime on a SemEval-format file.

Writes OUT/predictions.jsonl (`{"id", "labels", "scores"}` per record) and, when records carry labels,
OUT/report.json (micro/macro F1 and per-technique precision, recall, F1, support): scikit-learn's
`f1_score(..., zero_division=1)` on multi-hot vectors (the task's official metric), from scoring.metrics.
"""

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from consumer.core.hashing import content_hash
from consumer.core.runtime import BundleRuntime
from consumer.errors import ConfigError, MemeguardError
from consumer.evaluate.harmeme import is_harmeme_file
from scoring.metrics import micro_f1, multilabel_report  # noqa: F401 (re-exported: parity, replay, calibrate)

log = logging.getLogger(__name__)


def multi_hot(label_lists: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    index = {name: k for k, name in enumerate(labels)}
    out = np.zeros((len(label_lists), len(labels)), dtype=bool)
    for i, names in enumerate(label_lists):
        for name in names:
            if name in index:
                out[i, index[name]] = True
    return out


TRAINING_POOL_FILE = "run/training_pool.json"  # written by models/run_dir.save_training_pool, copied by the exporter


@dataclass(frozen=True)
class TrainingPool:
    """Content hashes (`consumer.core.hashing.content_hash`) of the memes a bundle's model was fitted on."""

    splits: list[str]
    hashes: frozenset[str]

    def overlap(self, content_hashes: Iterable[str]) -> dict[str, Any]:
        """How many of the scored memes the model was trained on: a figure on them measures fit, not
        generalisation."""
        scored = list(content_hashes)
        seen = sum(h in self.hashes for h in scored)
        answer = "yes" if seen else "no"
        return {"in_training_data": f"{answer} ({seen} of {len(scored)} memes)", "n_in_training_pool": seen,
                "n_scored": len(scored), "training_pool_splits": self.splits}


def load_training_pool(bundle_root: Path) -> TrainingPool | None:
    """None for bundles exported before the pool was recorded (or untrained demo bundles)."""
    path = Path(bundle_root) / TRAINING_POOL_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return TrainingPool(list(doc["splits"]), frozenset(doc["content_hashes"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def training_pool_report(pool: TrainingPool | None, content_hashes: Iterable[str]) -> dict[str, Any]:
    if pool is None:
        return {"in_training_data": "unknown (the bundle does not record its training pool)"}
    return pool.overlap(content_hashes)


def load_records(data: Path) -> list[dict[str, Any]]:
    """A JSON list of `{"id","text","image","labels"?}` records, or the same one per line (JSONL)."""
    try:
        raw = data.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(
            f"Cannot read the data file {data}: {e.strerror}. Pass an existing --data file."
        ) from e
    try:
        records = json.loads(raw) if raw.lstrip().startswith("[") else [
            json.loads(line) for line in raw.splitlines() if line.strip()
        ]
    except json.JSONDecodeError as e:
        raise ConfigError(f"{data} is not a JSON list or JSON lines of records: {e}.") from e
    for i, r in enumerate(records):
        if not isinstance(r, dict) or "id" not in r or "image" not in r:
            raise ConfigError(f"{data}: record {i} needs at least an 'id' and an 'image' field.")
    return records


def _open_image(path: Path) -> Image.Image | None:
    try:
        with Image.open(path) as im:  # decoded by content: SemEval's '.png' files are mostly JPEG
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError):
        return None


def evaluate(
    runtime: BundleRuntime, records: list[dict[str, Any]], images_dir: Path, out_dir: Path,
    batch_size: int = 16, progress: bool = True,
) -> dict[str, Any] | None:
    """Predict every record, write predictions.jsonl and (with labels) report.json; return the report."""
    labels = runtime.manifest.labels
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped: list[str] = []
    kept: list[dict[str, Any]] = []
    hashes: list[str] = []
    flags_all: list[np.ndarray] = []
    bar = tqdm(total=len(records), desc="evaluate", unit="meme", disable=not progress, file=sys.stderr)
    with (out_dir / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for start in range(0, len(records), batch_size):
            batch, images = [], []
            for r in records[start:start + batch_size]:
                image = _open_image(images_dir / str(r["image"]))
                if image is None:
                    log.warning("record %s: image %s missing or undecodable; skipped", r["id"], r["image"])
                    skipped.append(str(r["id"]))
                    continue
                batch.append(r)
                images.append(image)
                hashes.append(content_hash((images_dir / str(r["image"])).read_bytes(), r.get("text")))
            if batch:
                pred = runtime.predict(images, [str(r.get("text") or "") for r in batch])
                flags = runtime.flags(pred)
                for i, r in enumerate(batch):
                    line = {
                        "id": r["id"],
                        "labels": [labels[k] for k in np.flatnonzero(flags[i])],
                        "scores": {
                            name: round(float(p), 6)
                            for name, p in zip(labels, pred.technique_probs[i], strict=True)
                        },
                    }
                    if pred.harmful_probs is not None:
                        line["harmful_score"] = round(float(pred.harmful_probs[i]), 6)
                    f.write(json.dumps(line, ensure_ascii=False) + "\n")
                kept.extend(batch)
                flags_all.append(flags)
            bar.update(len(records[start:start + batch_size]))
    bar.close()
    labelled = [i for i, r in enumerate(kept) if isinstance(r.get("labels"), list)]
    if not labelled:
        return None
    pred_flags = np.concatenate(flags_all)[labelled]
    gold_lists = [kept[i]["labels"] for i in labelled]
    unknown = sorted({name for names in gold_lists for name in names} - set(labels))
    report = multilabel_report(multi_hot(gold_lists, labels), pred_flags, labels)
    report.update(training_pool_report(load_training_pool(runtime.bundle.root), [hashes[i] for i in labelled]))
    report.update({
        "n_records": len(records), "n_evaluated": len(labelled), "skipped": skipped,
        "unknown_labels": unknown, "model": runtime.version, "provider": runtime.provider,
        "metric": "sklearn f1_score(average=micro|macro, zero_division=1) on multi-hot vectors",
    })
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="memeguard evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True, type=Path, help="model bundle directory (or symlink)")
    p.add_argument("--data", required=True, type=Path,
                   help="SemEval-format JSON (or JSONL) records, or a HarMeme annotation .jsonl (scored from text)")
    p.add_argument("--images", type=Path,
                   help="folder the records' 'image' names are in (SemEval files; not used for HarMeme files)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--providers", default="auto", help="auto | tensorrt | cuda | cpu")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if is_harmeme_file(args.data):
            return _main_harmeme(args)
        if args.images is None or not args.images.is_dir():
            raise ConfigError(f"--images {args.images} is not a folder. Pass the folder holding the images.")
        records = load_records(args.data)
        runtime = BundleRuntime.load(args.bundle, providers=args.providers)
        report = evaluate(runtime, records, args.images, args.out, args.batch_size, not args.no_progress)
    except MemeguardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"predictions: {args.out / 'predictions.jsonl'}")
    if report is not None:
        print(f"micro-F1 {report['micro_f1']:.4f}  macro-F1 {report['macro_f1']:.4f}  "
              f"({report['n_evaluated']} labelled records)  report: {args.out / 'report.json'}")
        print(f"in training data: {report['in_training_data']}")
    return 0


def _main_harmeme(args: argparse.Namespace) -> int:
    from consumer.evaluate.harmeme import evaluate_harmeme

    runtime = BundleRuntime.load(args.bundle, providers=args.providers)
    report = evaluate_harmeme(runtime, args.data, args.out, batch_size=args.batch_size,
                              progress=not args.no_progress)
    b, t, d = report["binary"], report["three_class"], report["decisions"]
    print(f"predictions: {args.out / 'predictions.jsonl'}  report: {args.out / 'report.json'}")
    print(f"harmful (binary): AUROC {b['auroc']:.4f}  accuracy {b['accuracy']:.4f}  macro-F1 {b['macro_f1']:.4f}  "
          f"({report['n_evaluated']} records)")
    print(f"severity (3-class): accuracy {t['accuracy']:.4f}  macro-F1 {t['macro_f1']:.4f}")
    print(f"decisions ({report['policy']}): allow {d['allow_rate']:.3f}  review {d['review_rate']:.3f}  "
          f"block {d['block_rate']:.3f}  harmful caught {d['harmful_caught']:.3f}")
    print(f"in training data: {report['in_training_data']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
