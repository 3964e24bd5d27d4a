"""The GPU proof script (bench/gpu/run.sh, issue 30) run dry on the CPU, so it cannot rot before a GPU is lent.

`run.sh --dry-run --e2e` on the tests' tiny bundle: CPU provider at batches 1 and 2 (GPU providers, TensorRT and
the fp16 bundle are recorded as skipped with a reason on a machine without them), CPU decode of 8 real memes in
1 and 2 processes, and a tiny end-to-end stage (the session's broker + redis-server, one worker, 20 memes).
Plus the carry path (pieces -> stash -> joined, sha256-checked, bundle unpacked) on small files.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _skips(node, path="") -> list[tuple[str, object]]:
    """Every `skipped` value in the result, with where it sits."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "skipped":
                found.append((path, v))
            else:
                found.extend(_skips(v, f"{path}.{k}"))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found.extend(_skips(v, f"{path}[{i}]"))
    return found


@pytest.fixture(scope="module")
def dry_run(tiny_bundle: Path, stack, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("gpu-dry")
    out = tmp / "gpu.json"
    (tmp / "carry").mkdir()  # nothing carried: a wheel someone left in bench/gpu/wheels is not installed here
    env = {**os.environ, "PYTHON": sys.executable, "MEMEGUARD_GPU_STASH": str(tmp / "stash"),
           "MEMEGUARD_GPU_CARRY": str(tmp / "carry"),
           # the e2e stage runs on the session's broker and redis-server (one JVM start less)
           "MEMEGUARD_BENCH_BOOTSTRAP": stack.bootstrap, "MEMEGUARD_BENCH_REDIS_URL": stack.redis_url,
           "MEMEGUARD_DEV_BROKER": stack.broker}
    env.pop("OUT", None)  # measure.py copies its result into $OUT (the device tool's folder) when set
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu" / "run.sh"), "--dry-run", "--e2e",
                           "--bundle", str(tiny_bundle), "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_dry_run_records_the_machine_and_the_command(dry_run: dict) -> None:
    assert dry_run["dry_run"] is True
    assert dry_run["command"].startswith("bash bench/gpu/run.sh --dry-run")
    assert dry_run["machine"]["cores"] >= 1 and "gpus" in dry_run["machine"]
    assert dry_run["finished_at"]


def test_every_skip_says_why(dry_run: dict) -> None:
    for where, why in _skips(dry_run):
        assert isinstance(why, str) and len(why) > 15, (where, why)
    assert dry_run["providers"]["fp16"]["skipped"]  # no fp16 bundle given


def test_cpu_provider_is_measured_with_parity(dry_run: dict) -> None:
    fp32 = dry_run["providers"]["fp32"]
    cpu = fp32["providers"]["cpu"]
    assert cpu["active_provider"] == "CPUExecutionProvider"
    assert cpu["vs_recorded_golden"]["within_atol"] is True
    assert all(v == 0.0 for v in cpu["vs_cpu_max_abs_diff"].values())
    assert [row["batch"] for row in cpu["throughput"]] == [1, 2]
    for row in cpu["throughput"]:
        assert row["plain"]["memes_per_s"] > 0 and row["iobinding"]["memes_per_s"] > 0
    for gpu in ("cuda", "tensorrt"):  # measured where this onnxruntime has them, else skipped with a reason
        entry = fp32["providers"][gpu]
        assert "skipped" in entry or entry["throughput"][0]["plain"]["memes_per_s"] > 0


def test_decode_and_end_to_end_are_measured(dry_run: dict) -> None:
    decode = dry_run["decode"]
    assert [row["processes"] for row in decode["cpu"]] == [1, 2]
    assert all(row["images_per_s"] > 0 and row["images"] == 8 for row in decode["cpu"])
    assert "skipped" in decode["gpu"] or decode["gpu"]["images_per_s"] > 0
    e2e = dry_run["e2e"]
    assert "skipped" not in e2e, e2e
    assert e2e["peak"]["events"] == 20 and e2e["peak"]["memes_per_s"] > 0
    half = e2e["half_load"]
    assert half["verdicts"] == half["events"] and half["p50_ms"] <= half["p99_ms"]
    assert "infer" in half["median_timings_ms"]


def test_carry_pieces_join_and_unpack(tiny_bundle: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "bench" / "gpu"))
    try:
        import carry
    finally:
        sys.path.remove(str(REPO / "bench" / "gpu"))
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    wheel.write_bytes(os.urandom(int(2.5 * 2**20)))
    carried = tmp_path / "carry"
    parts = carry.split(wheel, None, 1, carried)
    bundle_parts = carry.split(tiny_bundle, "default", 1, carried)
    assert len(parts) == 3 and bundle_parts
    store = tmp_path / "stash"
    # First device run: only some pieces arrived; nothing is joined yet.
    first = tmp_path / "first"
    (first / "pieces").mkdir(parents=True)
    for p in parts[:2]:
        (first / "pieces" / p.name).write_bytes(p.read_bytes())
    (first / "pieces" / "demo-1.0-py3-none-any.whl.json").write_bytes(
        (carried / "pieces" / "demo-1.0-py3-none-any.whl.json").read_bytes())
    report = carry.stash(first, store)
    assert report["complete"] == [] and "demo-1.0-py3-none-any.whl" in report["incomplete"]
    # Second run: the rest arrives; the wheel is joined (sha256 checked) and the bundle unpacked.
    report = carry.stash(carried, store)
    assert sorted(report["complete"]) == ["bundle-default.tar", "demo-1.0-py3-none-any.whl"]
    joined = store / "wheels" / wheel.name
    assert hashlib.sha256(joined.read_bytes()).digest() == hashlib.sha256(wheel.read_bytes()).digest()
    assert report["bundles"] == ["default"]
    assert (store / "bundles" / "default" / "manifest.json").read_bytes() == (tiny_bundle / "manifest.json").read_bytes()
    assert carry.plan(carried, 2)  # pieces grouped into runs
