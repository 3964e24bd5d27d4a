"""Provider choice (pure, no GPU needed), TensorRT profiles, batching and the runtime's identity."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from consumer.core.bundle import ModelBundle
from consumer.core.preprocess import image_to_tensor
from consumer.core.runtime import CPU, CUDA, TENSORRT, BundleRuntime, engine_cache_dir, profile_shapes, provider_plan
from consumer.errors import ConfigError
from exporters.testing import synthetic_memes, write_tiny_bundle
from schemas import ImagePreprocessing


@pytest.fixture(scope="module")
def manifest(tiny_bundle: Path):
    return ModelBundle.load(tiny_bundle).manifest


def test_tensorrt_plan_has_engine_cache_and_profiles(manifest, tmp_path: Path) -> None:
    plan = provider_plan("auto", [TENSORRT, CUDA, CPU], manifest, tmp_path / "trt", max_batch=32)
    assert [name for name, _ in plan] == [TENSORRT, CUDA, CPU]
    trt = plan[0][1]
    assert trt["trt_engine_cache_enable"] is True and trt["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert trt["trt_fp16_enable"] is False  # fp32 bundle
    assert trt["trt_profile_min_shapes"] == "pixel_values:1x3x32x32,input_ids:1x1,attention_mask:1x1"
    assert trt["trt_profile_opt_shapes"] == "pixel_values:16x3x32x32,input_ids:16x32,attention_mask:16x32"
    assert trt["trt_profile_max_shapes"] == "pixel_values:32x3x32x32,input_ids:32x32,attention_mask:32x32"
    assert plan[1][1] == {"cudnn_conv_algo_search": "HEURISTIC"}


def test_plan_falls_back_in_order(manifest, tmp_path: Path) -> None:
    assert [n for n, _ in provider_plan("auto", [CUDA, CPU], manifest, tmp_path)] == [CUDA, CPU]
    assert provider_plan("auto", [CPU], manifest, tmp_path) == [(CPU, {})]
    assert [n for n, _ in provider_plan("cuda", [TENSORRT, CUDA, CPU], manifest, tmp_path)] == [CUDA, CPU]
    assert [n for n, _ in provider_plan("cpu", [TENSORRT, CUDA, CPU], manifest, tmp_path)] == [CPU]


def test_forcing_a_missing_provider_is_a_clear_error(manifest, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'tensorrt' .* is not available"):
        provider_plan("tensorrt", [CPU], manifest, tmp_path)


def test_forcing_cuda_on_the_cpu_build_refuses_to_start(tiny_bundle: Path) -> None:
    assert CUDA not in ort.get_available_providers()  # this machine's onnxruntime is the CPU build
    with pytest.raises(ConfigError, match="'cuda' .* is not available"):
        BundleRuntime.load(tiny_bundle, providers="cuda")
    assert BundleRuntime.load(tiny_bundle, providers="auto").provider == CPU  # auto accepts what there is


def test_a_forced_provider_onnxruntime_cannot_activate_is_a_startup_error(tiny_bundle: Path, monkeypatch) -> None:
    # onnxruntime-gpu without its CUDA libraries lists CUDA as available, then runs the session on the CPU.
    # The listing is the only thing faked here: the session is real and really falls back.
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    with pytest.raises(ConfigError, match="forces CUDAExecutionProvider, but ONNX Runtime could not activate it"):
        BundleRuntime.load(tiny_bundle, providers="cuda")
    assert BundleRuntime.load(tiny_bundle, providers="auto").provider == CPU  # auto: a warning, not an error


def test_engine_cache_can_be_pointed_at_a_volume(tiny_bundle: Path, tmp_path: Path) -> None:
    runtime = BundleRuntime.load(tiny_bundle, engine_cache_root=tmp_path / "trt")
    assert runtime.engine_cache == tmp_path / "trt" / runtime.bundle.fingerprint[:16]  # one directory per bundle
    assert BundleRuntime.load(tiny_bundle).engine_cache == engine_cache_dir(runtime.bundle)
    plan = provider_plan("auto", [TENSORRT, CPU], runtime.manifest, runtime.engine_cache)
    assert plan[0][1]["trt_engine_cache_path"] == str(runtime.engine_cache)


def test_memory_modes_score_the_same(tiny_bundle: Path) -> None:
    memes = synthetic_memes(6, seed=3)
    images, texts = [m.image for m in memes], [m.text for m in memes]
    bounded = BundleRuntime.load(tiny_bundle, memory="bounded").predict(images, texts)
    default = BundleRuntime.load(tiny_bundle, memory="ort_default").predict(images, texts)
    np.testing.assert_allclose(bounded.technique_probs, default.technique_probs, atol=1e-6)
    with pytest.raises(ConfigError, match="memory mode"):
        BundleRuntime.load(tiny_bundle, memory="unbounded")


def test_profile_defaults_come_from_the_manifest(manifest) -> None:
    shapes = profile_shapes(manifest)
    assert shapes["trt_profile_max_shapes"].startswith("pixel_values:64x3x32x32")


def test_runtime_reports_provider_and_versions(tiny_bundle: Path) -> None:
    runtime = BundleRuntime.load(tiny_bundle)
    assert runtime.model_info.provider == CPU == runtime.provider
    assert runtime.version.startswith("memeguard-tiny@0.1.0+")


def test_version_changes_with_the_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    other = BundleRuntime.load(write_tiny_bundle(tmp_path / "seed1", seed=1))
    assert other.version != BundleRuntime.load(tiny_bundle).version
    assert other.manifest.version == "0.1.0"  # same semantic version, still a different cache key


def test_scores_depend_on_image_and_text(tiny_bundle: Path) -> None:
    runtime = BundleRuntime.load(tiny_bundle)
    red, blue = Image.new("RGB", (40, 40), (255, 0, 0)), Image.new("RGB", (40, 40), (0, 0, 255))
    p = runtime.predict([red, red, blue, red], ["vote now", "vote now", "vote now", "never again"])
    assert np.array_equal(p.technique_probs[0], p.technique_probs[1])  # duplicates score the same
    assert np.abs(p.technique_probs[0] - p.technique_probs[2]).max() > 1e-3  # image matters
    assert np.abs(p.technique_probs[0] - p.technique_probs[3]).max() > 1e-3  # text matters
    assert p.harmful_probs is not None and p.harmful_probs.shape == (4,)


def test_batches_over_max_batch_are_split(tiny_bundle: Path) -> None:
    memes = synthetic_memes(10, seed=5)
    whole = BundleRuntime.load(tiny_bundle).predict([m.image for m in memes], [m.text for m in memes])
    split = BundleRuntime.load(tiny_bundle, max_batch=4).predict([m.image for m in memes],
                                                                 [m.text for m in memes])
    np.testing.assert_allclose(split.technique_probs, whole.technique_probs, atol=1e-5)
    np.testing.assert_allclose(split.harmful_probs, whole.harmful_probs, atol=1e-5)


def test_center_crop_keeps_aspect_ratio() -> None:
    im = Image.new("RGB", (200, 100), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 40, 100))  # white left fifth is cropped away
    spec = ImagePreprocessing(size=50, resize_mode="shorter_side_center_crop", mean=(0, 0, 0), std=(1, 1, 1))
    x = image_to_tensor(im, spec)
    assert x.shape == (3, 50, 50) and x.max() < 0.05
    squashed = image_to_tensor(im, spec.model_copy(update={"resize_mode": "squash"}))
    assert squashed.max() > 0.9


def test_serving_modules_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, consumer.core.runtime, consumer.core.bundle, consumer.worker.hot_reload, consumer.evaluate.run; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('models', 'exporters'))]; "
            "sys.exit(repr(bad) if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0
