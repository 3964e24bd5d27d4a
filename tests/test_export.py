"""Export of a tiny random fusion network: parity with PyTorch, fp16/int8 reports, dynamic batch."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from consumer.core.bundle import ModelBundle
from consumer.core.runtime import BundleRuntime
from exporters import cli
from exporters.bundle_writer import export_bundle
from exporters.errors import ParityError
from exporters.memes import DEFAULT_DATA, load_memes
from exporters.testing import load_tiny_run, synthetic_memes, tiny_model, write_tiny_run

DEV = DEFAULT_DATA / "dev.json"
needs_dev = pytest.mark.skipif(not DEV.is_file(), reason="shared SemEval data not present")
LOADER = "exporters.testing:load_tiny_run"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_run(tmp_path_factory.mktemp("run") / "tiny")


@needs_dev
def test_cli_export_fp32_matches_pytorch_on_dev_memes(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "b32"
    rc = cli.main(["export", str(run_dir), "--out", str(out), "--loader", LOADER,
                   "--parity-limit", "20", "--no-progress"])
    assert rc == 0
    bundle = ModelBundle.load(out)
    m = bundle.manifest
    assert m.parity is not None and m.parity.passed
    assert m.parity.max_abs_diff <= 1e-4 and m.parity.flag_agreement == 1.0
    assert m.parity.micro_f1_change == 0.0
    assert m.golden is not None and m.golden.count == 8
    assert {f.path for f in m.files} >= {"model.onnx", "tokenizer.json", "parity.json", "golden/golden.json"}
    assert m.trained is False and m.training_run_id == "tiny-seed0"
    details = json.loads((out / "parity.json").read_text())
    assert len(details["per_meme_max_abs_diff"]) == 20
    assert str(out.resolve()) in capsys.readouterr().out


@needs_dev
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_reports_agreement_and_f1_change(run_dir: Path, tmp_path: Path,
                                                           precision: str) -> None:
    out = tmp_path / precision
    assert cli.main(["export", str(run_dir), "--out", str(out), "--loader", LOADER, "--precision", precision,
                     "--parity-limit", "20", "--no-progress"]) == 0
    m = ModelBundle.load(out).manifest
    assert m.precision == precision and m.parity is not None
    assert m.parity.max_abs_diff_limit is None  # only flag agreement gates reduced precision
    assert m.parity.flag_agreement >= m.parity.min_flag_agreement
    assert m.parity.micro_f1_change is not None and m.runtime.trt_fp16 == (precision == "fp16")
    runtime = BundleRuntime.load(out, providers="cpu")
    assert np.isfinite(runtime.predict([Image.new("RGB", (40, 30))], ["x"]).technique_probs).all()


def test_parity_failure_fails_the_export(tmp_path: Path, run_dir: Path) -> None:
    class Drifted(type(tiny_model())):
        """A Python branch on the batch size: tracing (batch 2) bakes one branch into the graph."""

        def forward(self, pixel_values, *rest):  # type: ignore[override]
            probs, harmful = super().forward(pixel_values, *rest)
            return (probs, harmful) if pixel_values.shape[0] == 2 else (probs * 0.5, harmful)

    exported = load_tiny_run(str(run_dir))
    drifted = Drifted(exported.embed.num_embeddings)
    drifted.load_state_dict(exported.state_dict())
    memes = synthetic_memes(6)
    with pytest.raises(ParityError, match="fails parity"):
        export_bundle(drifted, run_dir, tmp_path / "bad", parity_memes=memes, show_progress=False)
    assert not (tmp_path / "bad").exists()  # nothing half-written where a watcher could see it
    assert (tmp_path / "bad.parity-failed.json").is_file()


def test_dynamic_batch_1_to_64(tiny_bundle: Path) -> None:
    runtime = BundleRuntime.load(tiny_bundle, providers="cpu")
    memes = synthetic_memes(64, seed=3)
    full = runtime.predict([m.image for m in memes], [m.text for m in memes]).technique_probs
    for b in (1, 7, 32, 64):
        part = runtime.predict([m.image for m in memes[:b]], [m.text for m in memes[:b]]).technique_probs
        assert part.shape == (b, 22)
        # Padding to the batch's longest text must not change a meme's scores.
        np.testing.assert_allclose(part, full[:b], atol=1e-5)


def test_manifest_inputs_are_dynamic(tiny_bundle: Path) -> None:
    specs = {i.name: i.shape for i in ModelBundle.load(tiny_bundle).manifest.inputs}
    assert specs["pixel_values"][0] == "batch" and specs["pixel_values"][1:] == [3, 32, 32]
    assert specs["input_ids"] == ["batch", "sequence"] and specs["attention_mask"] == ["batch", "sequence"]


@needs_dev
def test_load_memes_decodes_jpeg_named_png() -> None:
    memes = load_memes(DEV, limit=3)
    assert len(memes) == 3 and all(m.image.mode == "RGB" and m.labels is not None for m in memes)


def test_missing_run_dir_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert cli.main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "b"), "--no-parity"]) == 2
    assert "does not exist" in capsys.readouterr().err


def _run_of(bundle: Path, runs: Path) -> None:
    """A finished run of configs/default.yaml that `bundle` was exported from."""
    import json

    import yaml

    from consumer.core.bundle import ModelBundle
    from models.config import load_config

    run = runs / "memeguard-default"
    (run / "tokenizer").mkdir(parents=True)
    for name in ("tokenizer/tokenizer.json", "metrics.json", "thresholds.json", "checkpoint.pt"):
        (run / name).write_text("{}")
    config = load_config(Path(cli.REPO) / "configs" / "default.yaml")
    (run / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    (run / "run.json").write_text(json.dumps({"run_id": ModelBundle.load(bundle).manifest.training_run_id}))


def test_build_default_keeps_a_bundle_of_the_current_run_and_precision(tiny_bundle: Path, tmp_path: Path,
                                                                        capsys) -> None:
    import shutil

    out = Path(shutil.copytree(tiny_bundle, tmp_path / "default"))
    _run_of(out, tmp_path / "runs")
    before = (out / "manifest.json").read_bytes()
    args = ["build-default", "--out", str(out), "--runs", str(tmp_path / "runs"), "--precision", "fp32"]
    assert cli.main(args) == 0
    assert "bundle already built" in capsys.readouterr().out
    assert (out / "manifest.json").read_bytes() == before


def test_build_default_names_why_a_bundle_is_out_of_date(tiny_bundle: Path, tmp_path: Path) -> None:
    from consumer.core.bundle import ModelBundle
    from exporters.default import _stale_reason

    config = Path(cli.REPO) / "configs" / "default.yaml"
    bundle = ModelBundle.load(tiny_bundle)
    assert "int8" in _stale_reason(bundle, config, tmp_path / "runs", "int8")
    assert "changed since it was trained" in _stale_reason(bundle, config, tmp_path / "none", "fp32")
    _run_of(tiny_bundle, tmp_path / "runs")
    assert _stale_reason(bundle, config, tmp_path / "runs", "fp32") is None


def test_build_default_without_config_is_a_clear_error(tmp_path: Path, capsys) -> None:
    rc = cli.main(["build-default", "--out", str(tmp_path / "b"), "--runs", str(tmp_path / "runs"),
                   "--config", str(tmp_path / "missing.yaml")])
    assert rc == 2 and "Config" in capsys.readouterr().err
