"""A bundle is loaded only when every listed file matches its sha256; errors say what to do."""

import json
import shutil
from pathlib import Path

import pytest

from consumer.core.bundle import MANIFEST, ModelBundle
from consumer.core.runtime import BundleRuntime
from consumer.errors import BundleError


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "copy"))


def test_tiny_bundle_loads_and_lists_every_file(tiny_bundle: Path) -> None:
    bundle = ModelBundle.load(tiny_bundle)
    on_disk = {str(p.relative_to(tiny_bundle)) for p in tiny_bundle.rglob("*") if p.is_file()} - {MANIFEST}
    assert {f.path for f in bundle.manifest.files} == on_disk
    assert len(bundle.golden_records()) == 4


def test_tampered_onnx_is_refused(bundle_copy: Path) -> None:
    onnx_file = bundle_copy / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx does not match its sha256"):
        BundleRuntime.load(bundle_copy)


def test_truncated_file_is_refused(bundle_copy: Path) -> None:
    tok = bundle_copy / "tokenizer.json"
    tok.write_bytes(tok.read_bytes()[:100])
    with pytest.raises(BundleError, match="truncated or tampered"):
        ModelBundle.load(bundle_copy)


def test_missing_file_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "golden" / "golden.json").unlink()
    with pytest.raises(BundleError, match="incomplete: golden/golden.json is missing"):
        ModelBundle.load(bundle_copy)


def test_missing_manifest_names_the_build_command(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="memeguard bundle"):
        ModelBundle.load(tmp_path)


def test_invalid_manifest_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="invalid manifest.json"):
        ModelBundle.load(bundle_copy)


def test_labels_and_thresholds_must_match(bundle_copy: Path) -> None:
    doc = json.loads((bundle_copy / MANIFEST).read_text())
    doc["thresholds"] = doc["thresholds"][:-1]
    (bundle_copy / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="22 labels but 21 thresholds"):
        ModelBundle.load(bundle_copy)


def test_symlinked_bundle_resolves_to_its_target(tiny_bundle: Path, tmp_path: Path) -> None:
    link = tmp_path / "current"
    link.symlink_to(tiny_bundle)
    assert ModelBundle.load(link).root == tiny_bundle.resolve()
