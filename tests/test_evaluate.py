"""`memeguard evaluate` through the serving runtime; F1 from counts equals scikit-learn's."""

import json
from pathlib import Path

import numpy as np
import pytest

from consumer.evaluate import run as evaluate
from consumer.evaluate.run import multilabel_report
from exporters.testing import synthetic_memes
from schemas import TECHNIQUES


@pytest.mark.parametrize("seed", range(5))
def test_f1_matches_sklearn_zero_division_1(seed: int) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    gold = rng.random((30, 22)) < 0.15
    pred = rng.random((30, 22)) < 0.2
    gold[:, 3] = False  # a label that never occurs...
    pred[:, 3] = False  # ...and is never predicted: zero_division decides
    pred[:, 5] = False  # occurs, never predicted: precision ill-defined
    gold[:, 7] = False  # predicted, never occurs: recall ill-defined
    ours = multilabel_report(gold, pred, [str(k) for k in range(22)])
    for avg in ("micro", "macro"):
        assert ours[f"{avg}_f1"] == pytest.approx(metrics.f1_score(gold, pred, average=avg, zero_division=1))
    p, r, f, s = metrics.precision_recall_fscore_support(gold, pred, average=None, zero_division=1)
    for k in range(22):
        got = ours["per_technique"][str(k)]
        got_k = (got["precision"], got["recall"], got["f1"], got["support"])
        assert got_k == pytest.approx((p[k], r[k], f[k], s[k]))


def test_all_empty_scores_one() -> None:
    empty = np.zeros((4, 22), dtype=bool)
    assert multilabel_report(empty, empty, list(TECHNIQUES))["micro_f1"] == 1.0


def _write_dataset(folder: Path, labelled: bool) -> tuple[Path, Path]:
    images = folder / "imgs"
    images.mkdir(parents=True)
    records = []
    for i, meme in enumerate(synthetic_memes(5, seed=9)):
        name = f"{i}.png"
        meme.image.save(images / name, format="JPEG")  # JPEG bytes under a .png name, as in SemEval
        record = {"id": f"m{i}", "text": meme.text, "image": name}
        if labelled:
            record["labels"] = ["Smears", "Loaded Language"] if i % 2 else []
        records.append(record)
    data = folder / "data.json"
    data.write_text(json.dumps(records))
    return data, images


def test_evaluate_with_labels_writes_predictions_and_report(tiny_bundle: Path, tmp_path: Path) -> None:
    data, images = _write_dataset(tmp_path, labelled=True)
    out = tmp_path / "out"
    rc = evaluate.main(["--bundle", str(tiny_bundle), "--data", str(data), "--images", str(images),
                        "--out", str(out), "--batch-size", "2", "--no-progress"])
    assert rc == 0
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == ["m0", "m1", "m2", "m3", "m4"]
    assert list(lines[0]["scores"]) == list(TECHNIQUES)
    assert all(set(x["labels"]) <= set(TECHNIQUES) for x in lines)
    assert all(x["scores"][t] >= 0.5 for x in lines for t in x["labels"])  # tiny thresholds are 0.5
    report = json.loads((out / "report.json").read_text())
    assert 0.0 <= report["micro_f1"] <= 1.0 and 0.0 <= report["macro_f1"] <= 1.0
    assert report["n_evaluated"] == 5 and report["per_technique"]["Smears"]["support"] == 2


def test_evaluate_without_labels_writes_no_report(tiny_bundle: Path, tmp_path: Path) -> None:
    data, images = _write_dataset(tmp_path, labelled=False)
    (images / "3.png").unlink()  # a missing image is skipped with a warning, not a crash
    out = tmp_path / "out"
    assert evaluate.main(["--bundle", str(tiny_bundle), "--data", str(data), "--images", str(images),
                          "--out", str(out), "--no-progress"]) == 0
    ids = [json.loads(x)["id"] for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert ids == ["m0", "m1", "m2", "m4"]
    assert not (out / "report.json").exists()


def test_evaluate_bad_inputs_are_one_clear_sentence(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "bad.json").write_text('[{"text": "no id"}]')
    rc = evaluate.main(["--bundle", str(tiny_bundle), "--data", str(tmp_path / "bad.json"), "--images",
                        str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2 and "record 0 needs at least an 'id'" in capsys.readouterr().err
    rc = evaluate.main(["--bundle", str(tmp_path / "nobundle"), "--data", str(tmp_path / "bad.json"),
                        "--images", str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2


def test_real_dev_split_through_the_runtime(tiny_bundle: Path, tmp_path: Path) -> None:
    from exporters.memes import DEFAULT_DATA

    if not (DEFAULT_DATA / "dev.json").is_file():
        pytest.skip("shared SemEval data not present")
    records = json.loads((DEFAULT_DATA / "dev.json").read_text())[:12]
    (tmp_path / "dev12.json").write_text(json.dumps(records))
    assert evaluate.main(["--bundle", str(tiny_bundle), "--data", str(tmp_path / "dev12.json"), "--images",
                          str(DEFAULT_DATA / "images"), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "o" / "report.json").read_text())["n_evaluated"] == 12
