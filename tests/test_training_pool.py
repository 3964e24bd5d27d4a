"""Bundles record the memes their model was fitted on; `evaluate` and `replay` reports say how many they score."""

import json
from pathlib import Path

import numpy as np

from consumer.core.hashing import content_hash
from consumer.evaluate import run as evaluate
from consumer.evaluate.run import load_training_pool
from consumer.replay.report import EventInfo, ReplayResult, build_report
from exporters.bundle_writer import export_bundle
from exporters.testing import load_tiny_run, synthetic_memes, write_tiny_run
from models.data import Meme
from models.run_dir import save_training_pool
from schemas import TECHNIQUES
from schemas.verdict import Decision, ModelInfo, TechniqueScore, Verdict


def _dataset(folder: Path, n: int) -> tuple[Path, Path, list[dict]]:
    images = folder / "imgs"
    images.mkdir(parents=True)
    records = []
    for i, meme in enumerate(synthetic_memes(n, seed=3)):
        meme.image.save(images / f"{i}.png", format="JPEG")
        records.append({"id": f"m{i}", "text": meme.text, "image": f"{i}.png", "labels": ["Smears"] if i % 2 else []})
    data = folder / "data.json"
    data.write_text(json.dumps(records))
    return data, images, records


def _bundle_trained_on(tmp_path: Path, images: Path, records: list[dict]) -> Path:
    run = write_tiny_run(tmp_path / "run")
    pool = [Meme(r["id"], r["text"], images / r["image"]) for r in records]
    save_training_pool(run, ["train", "dev"], pool)
    out = tmp_path / "bundle"
    export_bundle(load_tiny_run(str(run)), run, out, golden_memes=synthetic_memes(2), show_progress=False)
    return out


def test_evaluate_says_how_many_memes_were_in_the_bundles_training_pool(tmp_path: Path, capsys) -> None:
    data, images, records = _dataset(tmp_path, 5)
    bundle = _bundle_trained_on(tmp_path, images, records[:2])  # fitted on 2 of the 5
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "run/training_pool.json" in {f["path"] for f in manifest["files"]}  # covered by the bundle's sha256s
    out = tmp_path / "out"
    assert evaluate.main(["--bundle", str(bundle), "--data", str(data), "--images", str(images), "--out", str(out),
                          "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["in_training_data"] == "yes (2 of 5 memes)"
    assert report["n_in_training_pool"] == 2 and report["training_pool_splits"] == ["train", "dev"]
    assert "in training data: yes (2 of 5 memes)" in capsys.readouterr().out


def test_evaluate_on_unseen_memes_says_no_and_an_old_bundle_says_unknown(tmp_path: Path, tiny_bundle: Path) -> None:
    data, images, records = _dataset(tmp_path, 3)
    unseen = [{**r, "text": r["text"] + " (edited)"} for r in records]  # same images, other text: other memes
    bundle = _bundle_trained_on(tmp_path, images, unseen)
    for b, expected in ((bundle, "no (0 of 3 memes)"), (tiny_bundle, "unknown")):
        out = tmp_path / f"out-{b.name}"
        assert evaluate.main(["--bundle", str(b), "--data", str(data), "--images", str(images), "--out", str(out),
                              "--no-progress"]) == 0
        assert json.loads((out / "report.json").read_text())["in_training_data"].startswith(expected)


def test_replay_report_counts_verdicts_whose_content_hash_is_in_the_pool(tmp_path: Path) -> None:
    _, images, records = _dataset(tmp_path, 4)
    bundle = _bundle_trained_on(tmp_path, images, records[:3])
    result = ReplayResult(model="m@1", training_pool=load_training_pool(bundle))
    events = {}
    for r in records:
        h = content_hash((images / r["image"]).read_bytes(), r["text"])  # what the worker puts in a verdict
        scores = [TechniqueScore(technique=t, score=0.9 if t == "Smears" else 0.1, threshold=0.5,
                                 flagged=t == "Smears") for t in TECHNIQUES]
        result.verdicts[r["id"]] = Verdict(event_id=r["id"], post_id=r["id"], content_hash=h,
                                           model=ModelInfo(name="m", version="1"), techniques=scores,
                                           decision=Decision.REVIEW)
        events[r["id"]] = EventInfo(r["id"], r["id"], r["text"], "inline", r["labels"], bool(r["labels"]))
    report = build_report(result, events, list(TECHNIQUES))
    assert report["in_training_data"] == "yes (3 of 4 memes)"
    assert report["micro_f1"] == np.float64(report["micro_f1"])  # the figures are still there beside it
