"""Hot reload: a new bundle is validated in the background and swapped in; a bad one is rejected."""

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from consumer.core.bundle import MANIFEST, ModelBundle, digest_files
from consumer.core.runtime import BundleRuntime
from consumer.errors import BundleError
from consumer.worker.hot_reload import BundleWatcher, validate_runtime
from exporters.testing import write_tiny_bundle


@pytest.fixture(scope="module")
def second_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bundle(tmp_path_factory.mktemp("b2") / "seed1", seed=1)


def _point(link: Path, target: Path) -> None:
    """Re-point a symlink atomically, as a deployment would (`ln -sfn` via rename)."""
    tmp = link.with_name(link.name + ".tmp")
    tmp.symlink_to(target)
    tmp.replace(link)


def _corrupt_golden(src: Path, dst: Path) -> Path:
    """A bundle whose files are consistent but whose recorded golden outputs are wrong."""
    shutil.copytree(src, dst)
    golden = json.loads((dst / "golden" / "golden.json").read_text())
    golden["records"][0]["technique_probs"][0] += 0.5
    (dst / "golden" / "golden.json").write_text(json.dumps(golden))
    manifest = ModelBundle.load(dst, verify=False).manifest
    files = digest_files(dst, [f.path for f in manifest.files])
    (dst / MANIFEST).write_text(manifest.model_copy(update={"files": files}).model_dump_json())
    return dst


def _wait_ready(watcher: BundleWatcher, timeout: float) -> BundleRuntime | None:
    """The background poller notices the change on its own; wait for its result."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (ready := watcher.take_ready()) is not None:
            return ready
        time.sleep(0.05)
    return None


def test_symlink_switch_swaps_in_a_validated_bundle(tiny_bundle: Path, second_bundle: Path,
                                                    tmp_path: Path) -> None:
    link = tmp_path / "current"
    link.symlink_to(tiny_bundle)
    runtime = BundleRuntime.load(link)
    watcher = BundleWatcher(link, current=runtime, poll_interval_s=0.05).start()
    try:
        assert not watcher.poll_once() and watcher.take_ready() is None  # unchanged: nothing to do
        _point(link, second_bundle)
        new = _wait_ready(watcher, 30)
        assert new is not None
        assert new.version != runtime.version and new.bundle.root == second_bundle.resolve()
        assert watcher.take_ready() is None  # handed over once
        assert watcher.status.loaded == 1 and watcher.status.rejected == 0
    finally:
        watcher.stop()


def test_bad_bundle_is_rejected_and_the_old_one_keeps_serving(tiny_bundle: Path, tmp_path: Path,
                                                             caplog) -> None:
    runtime = BundleRuntime.load(tiny_bundle)
    tampered = Path(shutil.copytree(tiny_bundle, tmp_path / "tampered"))
    (tampered / "model.onnx").write_bytes((tampered / "model.onnx").read_bytes()[:1000])
    watcher = BundleWatcher(tiny_bundle, current=runtime, poll_interval_s=60).start()
    try:
        # Traffic keeps flowing on the old runtime while the bad bundle is tried.
        errors: list[Exception] = []
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                try:
                    runtime.predict([Image.new("RGB", (20, 20))], ["still serving"])
                except Exception as e:  # pragma: no cover - would fail the test below
                    errors.append(e)

        t = threading.Thread(target=traffic)
        t.start()
        watcher.request_reload(tampered)
        assert watcher.wait_idle(30)
        stop.set()
        t.join()
        assert not errors and watcher.take_ready() is None
        assert watcher.status.rejected == 1
        assert "does not match its sha256" in (watcher.status.last_error or "")
        assert any("reload rejected" in r.message for r in caplog.records)
        # Polling does not retry the same bad bundle over and over.
        assert not watcher.poll_once()
    finally:
        watcher.stop()


def test_golden_mismatch_is_rejected_unless_disabled(tiny_bundle: Path, tmp_path: Path) -> None:
    bad = _corrupt_golden(tiny_bundle, tmp_path / "badgolden")
    runtime = BundleRuntime.load(bad)  # files are consistent: only the golden check can catch it
    with pytest.raises(BundleError, match="disagrees with its recorded golden outputs"):
        validate_runtime(runtime)
    assert validate_runtime(runtime, compare_recorded=False) == 4

    watcher = BundleWatcher(tiny_bundle, poll_interval_s=60).start()
    try:
        watcher.request_reload(bad)
        assert watcher.wait_idle(30) and watcher.take_ready() is None and watcher.status.rejected == 1
        watcher.request_reload(tiny_bundle)  # a good one afterwards still goes through
        assert watcher.wait_idle(30)
        good = watcher.take_ready()
        assert good is not None
        assert np.isfinite(good.predict([Image.new("RGB", (8, 8))], ["x"]).technique_probs).all()
    finally:
        watcher.stop()


def test_directory_rewritten_in_place_is_reloaded(tiny_bundle: Path, second_bundle: Path,
                                                  tmp_path: Path) -> None:
    live = Path(shutil.copytree(tiny_bundle, tmp_path / "live"))
    runtime = BundleRuntime.load(live)
    watcher = BundleWatcher(live, current=runtime, poll_interval_s=60)  # polled by hand below
    watcher.start()
    try:
        shutil.rmtree(live)
        shutil.copytree(second_bundle, live)
        assert watcher.poll_once()
        assert watcher.wait_idle(30)
        new = watcher.take_ready()
        assert new is not None and new.version != runtime.version
    finally:
        watcher.stop()


def test_start_up_and_hot_reload_build_the_same_runtime(tiny_bundle: Path, second_bundle: Path,
                                                        tmp_path: Path) -> None:
    """One factory (RuntimeOptions.of(settings)): the start-up runtime used to take the manifest's batch (64)
    and a reloaded one MEMEGUARD_MAX_BATCH, so TensorRT profiles and call sizes changed at the first reload."""
    from consumer.settings import WorkerSettings
    from consumer.worker.assemble import build_pipeline, bundle_watcher

    link = tmp_path / "current"
    link.symlink_to(tiny_bundle)
    settings = WorkerSettings(bundle_path=link, providers="cpu", max_batch=8, intra_op_threads=2, redis_url="",
                              trt_engine_cache_dir=tmp_path / "trt")
    started = build_pipeline(settings).runtime
    watcher = bundle_watcher(settings, started)
    _point(link, second_bundle)
    watcher.request_reload()
    watcher.start()
    try:
        assert watcher.wait_idle(60)
        reloaded = watcher.take_ready()
    finally:
        watcher.stop()
    assert reloaded is not None and reloaded.bundle.root == second_bundle.resolve()

    def build(rt: BundleRuntime) -> tuple:
        return (rt.max_batch, rt.call_batch, rt.session.get_providers(),
                rt.session.get_session_options().intra_op_num_threads, rt.engine_cache_root)

    assert build(started) == build(reloaded) == (8, 8, ["CPUExecutionProvider"], 2, tmp_path / "trt")
    assert started.max_batch != started.manifest.runtime.max_batch  # the setting, not the manifest's
