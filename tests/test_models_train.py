"""End to end on a few real memes: `train` → run folder → `evaluate` → `load_for_export` → ONNX Runtime."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from models import cli
from models.config import load_config
from models.errors import NotExportableError
from models.inference import load_for_export
from models.paths import semeval_dir

pytestmark = pytest.mark.skipif(not (semeval_dir() / "dev.json").is_file(), reason="shared SemEval data absent")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MEMEGUARD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    torch.set_num_threads(1)


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _onnx_roundtrip(run_dir: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    model = load_for_export(run_dir)
    s = model.image_spec.size
    pixels = torch.randn(2, 3, s, s)
    ids = torch.tensor([[2, 3, 4, 5], [2, 3, 4, 0]])  # valid in any vocabulary of > 5 words
    mask = (ids != 0).long()
    path = tmp_path / "model.onnx"
    axes = {"pixel_values": {0: "batch"}, "input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    axes |= {name: {0: "batch"} for name in model.output_names}
    torch.onnx.export(
        model,
        (pixels, ids, mask),
        str(path),
        input_names=model.input_names,
        output_names=model.output_names,
        dynamic_axes=axes,
        dynamo=False,
        opset_version=17,
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == model.input_names
    # A different batch size and length than at export time: the axes really are dynamic.
    pixels3, ids3 = torch.randn(3, 3, s, s), torch.tensor([[2, 4, 3]] * 3)
    mask3 = torch.ones_like(ids3)
    got = sess.run(None, {"pixel_values": pixels3.numpy(), "input_ids": ids3.numpy(), "attention_mask": mask3.numpy()})
    with torch.inference_mode():
        want = model(pixels3, ids3, mask3)
    want = want if isinstance(want, tuple) else (want,)
    assert got[0].shape == (3, 22)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4)


@pytest.mark.slow
def test_default_config_one_epoch_on_a_few_real_memes_then_evaluate_and_export(tmp_path: Path) -> None:
    cfg = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    cfg["evaluation"]["folds"] = 2
    runs = tmp_path / "runs"
    assert cli.main(["train", str(_write(tmp_path, cfg)), "--out", str(runs), "--epochs", "1", "--limit", "6"]) == 0
    run_dir = runs / "memeguard-default"
    for name in (
        "config.yaml",
        "metrics.json",
        "thresholds.json",
        "checkpoint.pt",
        "preprocessing.json",
        "tokenizer/tokenizer.json",
        "training_pool.json",
    ):
        assert (run_dir / name).is_file(), name
    pool = json.loads((run_dir / "training_pool.json").read_text())
    assert pool["splits"] == ["train", "dev"] and pool["n_memes"] == 12 == len(pool["content_hashes"])
    th = json.loads((run_dir / "thresholds.json").read_text())
    assert len(th["labels"]) == len(th["thresholds"]) == 22
    pre = json.loads((run_dir / "preprocessing.json").read_text())
    assert pre["image"]["size"] == 224 and pre["image"]["resize_mode"] == "squash"
    assert {"cv_micro_f1", "harm_cv_harm_c_auroc", "harm_cv_harm_p_auroc"} <= set(
        json.loads((run_dir / "metrics.json").read_text()))

    assert cli.main(["evaluate", str(run_dir), "--data", "dev", "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["n"] == 63 and len(report["per_label"]) == 22
    for png in ("per_technique_f1.png", "pr_curves.png", "tsne.png", "label_cooccurrence.png"):
        assert (tmp_path / "eval" / png).stat().st_size > 1000

    model = load_for_export(run_dir)
    assert not model.training and model.name == "memeguard-default" and model.has_harmful_head
    assert model.input_names == ["pixel_values", "input_ids", "attention_mask"]
    # The harm head (HarMeme, the first 6 memes of each severity of each file here) and the policy fitted on it.
    assert model.output_names == ["technique_probs", "harmful_prob", "severity_probs"]
    assert [o["role"] for o in model.extra_outputs] == ["harm", "severity"]
    assert model.policy is not None and model.policy.review_min_flags == 0
    assert set(model.metrics) >= {"cv_micro_f1", "dev_micro_f1"}
    _onnx_roundtrip(run_dir, tmp_path)  # the real MiniLM + EfficientNet-Lite0 graph


def test_build_default_reuses_a_finished_run_only_when_it_was_trained_from_the_same_config(tmp_path: Path) -> None:
    from exporters.default import run_matches_config

    config = REPO / "configs" / "default.yaml"
    run = tmp_path / "memeguard-default"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(load_config(config).to_dict(), sort_keys=False))
    assert run_matches_config(run, config)  # what save_run writes round-trips
    (run / "config.yaml").write_text(yaml.safe_dump(load_config(REPO / "configs" / "minilm_efficientnet.yaml")
                                                    .to_dict() | {"name": "memeguard-default"}, sort_keys=False))
    assert not run_matches_config(run, config)  # the MiniLM default's run is not the MPNet default's


@pytest.mark.slow
def test_tiny_scratch_multimodal_model_round_trips_through_onnx(tmp_path: Path) -> None:
    cfg = yaml.safe_load((REPO / "configs" / "cnn_lstm.yaml").read_text())
    cfg["evaluation"]["folds"] = 0
    cfg["text_encoder"] |= {"embed_dim": 8, "hidden": 8}
    runs = tmp_path / "runs"
    assert cli.main(["train", str(_write(tmp_path, cfg)), "--out", str(runs), "--epochs", "1", "--limit", "8"]) == 0
    _onnx_roundtrip(runs / "cnn-lstm", tmp_path)


@pytest.mark.slow
def test_hateful_memes_jsonl_trains_a_harmful_head_that_exports(tmp_path: Path) -> None:
    """The Hateful Memes images are not shipped: a small generated set stands in for them."""
    from PIL import Image

    (tmp_path / "img").mkdir()
    rows = []
    for i in range(16):
        Image.new("RGB", (48, 40), (200 * (i % 2), 60, 30 + i)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"id": i, "img": f"img/{i}.png", "label": i % 2, "text": ["love all", "hate them"][i % 2]})
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = yaml.safe_load((REPO / "configs" / "cnn_lstm.yaml").read_text())
    cfg["data"] = {"pool": [str(data)], "train": str(data), "dev": ""}
    cfg["evaluation"]["folds"] = 2
    cfg["training"]["downsample"] = True
    runs = tmp_path / "runs"
    assert cli.main(["train", str(_write(tmp_path, cfg)), "--out", str(runs), "--epochs", "1"]) == 0
    model = load_for_export(runs / "cnn-lstm")
    assert model.has_harmful_head and model.output_names == ["technique_probs", "harmful_prob"]
    _onnx_roundtrip(runs / "cnn-lstm", tmp_path)
    assert cli.main(["evaluate", str(runs / "cnn-lstm"), "--data", str(data), "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert 0.0 <= report["harmful_auroc"] <= 1.0


def test_tfidf_svm_trains_and_refuses_export(tmp_path: Path) -> None:
    cfg = yaml.safe_load((REPO / "configs" / "tfidf_svm.yaml").read_text())
    cfg["evaluation"]["folds"] = 2
    runs = tmp_path / "runs"
    assert cli.main(["train", str(_write(tmp_path, cfg)), "--out", str(runs), "--limit", "20"]) == 0
    with pytest.raises(NotExportableError, match="not a neural network"):
        load_for_export(runs / "tfidf-svm")


def test_missing_config_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    assert os.environ["HF_HUB_OFFLINE"] == "1"
