"""GPU proof (issue 30): one driver that measures the bundle's GPU path and writes one JSON file.

    bash bench/gpu/run.sh [--e2e] [--bundle DIR] [--fp16-bundle DIR] [--out FILE]   # on the GPU machine
    .venv/bin/python bench/gpu/measure.py --dry-run --bundle DIR                     # CPU dry run (tests)

Stages (each either measures or records `{"skipped": "<why>"}`, never a made-up figure):

1. providers: the bundle (fp32, and fp16 when `--fp16-bundle` is given) on every requested ONNX Runtime provider
   this build has (CPU, CUDA, TensorRT), through the service's own `BundleRuntime` (provider plan, TensorRT
   profile and engine cache, session options): memes/s of the model call alone at each batch size (inputs
   preprocessed beforehand), with IO binding (inputs and outputs resident on the GPU) where the provider is a
   GPU one; TensorRT engine build time on an empty engine cache and the second start on the same cache; parity
   of each provider's outputs against the CPU provider's on the bundle's golden set (max |diff| per output head)
   and against the outputs recorded at export (the bundle's `golden.atol`).
2. decode: the worker's CPU decode (`open_image` + `PillowTensorDecoder`, reduced JPEG decoding, the bundle's
   input size) in N processes, against GPU JPEG decode (`torchvision.io.decode_jpeg(device="cuda")`, nvJPEG)
   + resize + normalisation to the same tensor, images/s on the same real memes. torch is imported only here.
3. e2e (`--e2e`): the embedded broker + redis-server (`consumer.devinfra.stack.DevStack`, as `memeguard dev up`),
   `memeguard worker --processes N` on the bundle, a backlog of unique memes (all cache misses): memes/s, then a
   paced run at half that rate: p50/p99 post -> verdict latency, the median of each `timings_ms` stage, and
   `nvidia-smi dmon` utilisation when there is a GPU. Reuses bench/common.py, bench_hotpath.py, bench_latency.py.
"""

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

STASH = Path(os.environ.get("MEMEGUARD_GPU_STASH", Path.home() / ".cache" / "memeguard-gpu"))
PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "tensorrt": "TensorrtExecutionProvider"}
MAX_PIXELS = 40_000_000


def skipped(why: str) -> dict:
    return {"skipped": why}


def _short(error: BaseException, limit: int = 400) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "…"


def _run(cmd: list[str], timeout: float = 20) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def gpus() -> list[dict]:
    """What `nvidia-smi` reports (no torch import); empty without a driver."""
    out = _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,mig.mode.current",
                "--format=csv,noheader"])
    if not out:
        return []
    rows = []
    for line in out.splitlines():
        name, memory, driver, mig = (p.strip() for p in (line.split(",") + ["", "", ""])[:4])
        rows.append({"name": name, "memory": memory, "driver": driver, "mig": mig})
    return rows


def machine() -> dict:
    lscpu = _run(["lscpu"]) or ""
    cpu = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
               platform.processor() or "unknown")
    try:
        ram_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                          if line.startswith("MemTotal")))
    except (OSError, StopIteration, ValueError):
        ram_kb = 0
    versions = {}
    for module in ("onnxruntime", "numpy", "PIL"):
        try:
            versions[module] = __import__(module).__version__
        except Exception as e:  # noqa: BLE001 (a missing module is a fact about the machine)
            versions[module] = f"unavailable ({_short(e, 120)})"
    return {"hostname": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(ram_kb / 2**20, 1),
            "gpus": gpus(), "python": platform.python_version(), "versions": versions,
            "load_avg_at_start": list(os.getloadavg())}


# ---------------------------------------------------------------------------------------------------- bundles


def find_bundle(explicit: str | None, name: str, search: bool = True) -> Path | None:
    """`explicit`, else `.cache/bundles/<name>` (`make bundle`), else the stash's (carried in pieces)."""
    if explicit:
        return Path(explicit)
    if not search:
        return None
    for candidate in (REPO / ".cache" / "bundles" / name, STASH / "bundles" / name):
        if (candidate / "manifest.json").is_file():
            return candidate
    return None


def golden_inputs(bundle_path: Path):
    from PIL import Image

    from consumer.core.bundle import ModelBundle

    records = ModelBundle.load(bundle_path).golden_records()
    images = []
    for r in records:
        with Image.open(r.image_path) as im:
            images.append(im.convert("RGB"))
    return records, images, [r.text for r in records]


# ---------------------------------------------------------------------------------------------------- providers


def _time_calls(call, min_seconds: float, min_calls: int = 3) -> dict:
    call()  # this shape's first call (allocation, kernel choice) is not timed
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return {"calls": len(times), "median_call_ms": round(statistics.median(times) * 1000, 3)}


def _iobinding_call(runtime, feeds: dict, device: str):
    """Inputs copied to `device` once, outputs left there: on a GPU, the model call without host<->device copies
    (on the CPU provider the same code binds host memory: no copy to save, so about the plain call)."""
    import onnxruntime as ort

    session = runtime.session
    binding = session.io_binding()
    resident = {name: ort.OrtValue.ortvalue_from_numpy(array, device, 0) for name, array in feeds.items()}
    for name, value in resident.items():
        binding.bind_ortvalue_input(name, value)
    for output in session.get_outputs():  # every output the graph has, as the plain call computes them
        binding.bind_output(output.name, device, 0)

    def call() -> None:
        session.run_with_iobinding(binding, runtime._run_options)
        binding.synchronize_outputs()
    return call


def _throughput(runtime, images, texts, batches: list[int], seconds: float, device: str | None) -> list[dict]:
    rows = []
    for b in batches:
        pick = [i % len(images) for i in range(b)]
        feeds = runtime.feeds([images[i] for i in pick], [texts[i] for i in pick])
        row: dict = {"batch": b, "seq_len": int(next((v.shape[1] for k, v in feeds.items() if v.ndim == 2), 0))}
        try:
            plain = _time_calls(lambda f=feeds: runtime.run_feeds(f), seconds)
            row["plain"] = {**plain, "memes_per_s": round(b * 1000 / plain["median_call_ms"], 1)}
        except Exception as e:  # noqa: BLE001 (e.g. out of memory at batch 256 on the CPU: say so, go on)
            row["plain"] = skipped(f"the call failed at batch {b}: {_short(e)}")
        if device is None:
            row["iobinding"] = skipped("not measured on the CPU provider: its inputs already are in host memory, so "
                                       "binding saves no copy (the dry run times it, to keep the code path alive)")
            rows.append(row)
            continue
        try:
            timed = _time_calls(_iobinding_call(runtime, feeds, device), seconds)
            row["iobinding"] = {**timed, "memes_per_s": round(b * 1000 / timed["median_call_ms"], 1),
                                "inputs_and_outputs_on": device}
        except Exception as e:  # noqa: BLE001
            row["iobinding"] = skipped(f"IO binding on {device} failed: {_short(e)}")
        rows.append(row)
    return rows


def _outputs(runtime, images, texts) -> dict:
    """Each output head of one call on the golden memes, by the serving runtime's name for it."""
    pred = runtime.run_feeds(runtime.feeds(images, texts))
    heads = ("technique_probs", "harmful_probs", "severity_probs")
    return {h: getattr(pred, h) for h in heads if getattr(pred, h, None) is not None}


def _parity(outputs: dict, reference: dict) -> dict:
    import numpy as np

    return {name: round(float(np.abs(outputs[name] - reference[name]).max()), 8) for name in reference}


def _vs_recorded(runtime, outputs: dict, records) -> dict:
    import numpy as np

    m = runtime.manifest
    diffs = {"technique_probs": float(np.abs(outputs["technique_probs"]
                                             - np.asarray([r.technique_probs for r in records])).max())}
    if "harmful_probs" in outputs and all(r.harmful_prob is not None for r in records):
        diffs["harmful_probs"] = float(np.abs(outputs["harmful_probs"]
                                              - np.asarray([r.harmful_prob for r in records])).max())
    atol = m.golden.atol if m.golden is not None else None
    return {"max_abs_diff": {k: round(v, 8) for k, v in diffs.items()}, "atol": atol,
            "within_atol": None if atol is None else bool(max(diffs.values()) <= atol)}


def _engine_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def measure_bundle(precision: str, bundle_path: Path, providers: list[str], batches: list[int], seconds: float,
                   threads: int, cpu_batches: list[int], cpu_iobinding: bool) -> dict:
    import onnxruntime as ort

    from consumer.core.runtime import CPU, TENSORRT, BundleRuntime

    records, images, texts = golden_inputs(bundle_path)
    if not records:
        return skipped(f"{bundle_path} ships no golden set: no real memes to run or to compare on")
    available = ort.get_available_providers()
    result: dict = {"bundle": str(bundle_path), "precision": precision, "golden_memes": len(records),
                    "available_providers": available, "providers": {}}
    reference = None
    for short in providers:
        name = PROVIDER_NAMES[short]
        if name not in available:
            result["providers"][short] = skipped(
                f"this onnxruntime build ({ort.__version__}, {ort.get_device()}) has no {name}: onnxruntime-gpu "
                f"was not installed from bench/gpu/wheels" + (", or TensorRT's libraries are absent"
                                                                 if short == "tensorrt" else ""))
            continue
        row: dict = {}
        engine_root = Path(tempfile.mkdtemp(prefix=f"mg-trt-{precision}-")) if name == TENSORRT else None
        try:
            started = time.perf_counter()
            runtime = BundleRuntime.load(bundle_path, providers=short, intra_op_threads=threads,
                                         max_batch=max(batches), engine_cache_root=engine_root)
            created = time.perf_counter() - started
            first = _outputs(runtime, images, texts)
            row["start_s"] = {"session": round(created, 3), "session_and_first_call": round(time.perf_counter()
                                                                                            - started, 3)}
        except Exception as e:  # noqa: BLE001 (ConfigError when ORT would fall back, missing CUDA libraries, …)
            result["providers"][short] = skipped(f"{name} did not start: {_short(e)}")
            continue
        row["active_provider"] = runtime.provider
        try:  # a failure past the start (the TensorRT restart, one IO binding) keeps what was measured before it
            if name == TENSORRT:
                cache = runtime.engine_cache
                row["tensorrt"] = {"engine_cache": str(cache), "files_after_first_start": _engine_files(cache),
                                   "engine_build_s": row["start_s"]["session_and_first_call"],
                                   "note": "first start on an empty engine cache: session + first call (the build)"}
                runtime = None
                started = time.perf_counter()
                runtime = BundleRuntime.load(bundle_path, providers=short, intra_op_threads=threads,
                                             max_batch=max(batches), engine_cache_root=engine_root)
                _outputs(runtime, images, texts)
                second = round(time.perf_counter() - started, 3)
                row["tensorrt"].update({"second_start_s": second, "files_after_second_start": _engine_files(cache),
                                        "second_start_within_10s_target": second <= 10.0,
                                        "reused": second < row["tensorrt"]["engine_build_s"] / 2
                                        and _engine_files(cache) == row["tensorrt"]["files_after_first_start"]})
            row["vs_recorded_golden"] = _vs_recorded(runtime, first, records)
            if name == CPU:
                reference = first
            row["vs_cpu_max_abs_diff"] = (skipped("CPU outputs were not computed (cpu not among --providers)")
                                          if reference is None else _parity(first, reference))
            if name == CPU:
                row["throughput"] = _throughput(runtime, images, texts, cpu_batches, seconds,
                                                "cpu" if cpu_iobinding else None)
            else:
                row["throughput"] = _throughput(runtime, images, texts, batches, seconds, "cuda")
        except Exception as e:  # noqa: BLE001
            row["failed"] = f"after a successful start: {_short(e)}"
        result["providers"][short] = row
        runtime = None  # the session (and its GPU memory) goes before the next provider's
    return result


def stage_providers(args) -> dict:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return skipped(f"onnxruntime is not importable: {_short(e)}")
    out: dict = {"what": "model call alone: inputs preprocessed before timing; memes/s = batch / median call",
                 "batches": args.batches, "cpu_batches": args.cpu_batches, "intra_op_threads": args.threads,
                 "inputs": "the bundle's golden memes, repeated to the batch size"}
    # The dry run takes only the bundles it is given: a 279 MB default bundle would not keep it tiny.
    bundles = {"fp32": find_bundle(args.bundle, "default", not args.dry_run),
               "fp16": find_bundle(args.fp16_bundle, "default-fp16", not args.dry_run)}
    for precision, path in bundles.items():
        if path is None:
            out[precision] = skipped(
                "no fp16 bundle given (--fp16-bundle, or carried as bundles/default-fp16)" if precision == "fp16"
                else "no default bundle: not built here (make bundle), not carried in pieces (bench/gpu/carry.py), "
                     "and none given (--bundle; the dry run searches for none)")
            continue
        try:
            out[precision] = measure_bundle(precision, path, args.providers, args.batches, args.seconds,
                                            args.threads, args.cpu_batches, args.dry_run)
        except Exception as e:  # noqa: BLE001 (an unreadable bundle is one stage's failure, not the run's)
            out[precision] = skipped(f"the bundle could not be measured: {_short(e)}")
    return out


# ---------------------------------------------------------------------------------------------------- decode


def meme_dirs(explicit: str | None) -> list[Path]:
    if explicit:
        return [Path(explicit)]
    return [REPO.parent / "shared" / "data" / "semeval2021_task6" / "images",
            REPO / "shared" / "data" / "semeval2021_task6" / "images", STASH / "memes"]


def jpeg_files(explicit: str | None, limit: int) -> tuple[Path | None, list[Path]]:
    for folder in meme_dirs(explicit):
        if folder.is_dir():
            files = [p for p in sorted(folder.iterdir()) if p.is_file() and p.read_bytes()[:3] == b"\xff\xd8\xff"]
            return folder, files[:limit]
    return None, []


_BLOBS: list[bytes] = []


def _load_blobs(paths: list[str]) -> None:
    _BLOBS[:] = [Path(p).read_bytes() for p in paths]
    from consumer.core import images  # noqa: F401 (imported before timing)


def _decode_range(task: tuple[int, int, int]) -> int:
    """CPU decode of blobs [start, stop) to the model input of `size`, as the worker does (reduced decoding)."""
    from consumer.core.images import DecodePolicy, PillowTensorDecoder, open_image
    from schemas import ImagePreprocessing

    start, stop, size = task
    spec, policy, decoder = ImagePreprocessing(size=size), DecodePolicy(), PillowTensorDecoder()
    for data in _BLOBS[start:stop]:
        prepared = open_image(data, MAX_PIXELS, formats=policy.formats, target=size, gap=policy.gap,
                              dc_subset=policy.scan_subset)
        decoder.decode(prepared, spec)
    return stop - start


def cpu_decode(files: list[Path], size: int, processes: int, rounds: int) -> dict:
    import multiprocessing

    n = len(files)
    chunk = max(1, n // (processes * 4))
    tasks = [(s, min(n, s + chunk), size) for s in range(0, n, chunk)]
    with multiprocessing.get_context("spawn").Pool(processes, _load_blobs, ([str(f) for f in files],)) as pool:
        pool.map(_decode_range, [(0, 1, size)] * processes * 2)  # every process started, imports done
        best = None
        for _ in range(rounds):
            started = time.perf_counter()
            assert sum(pool.map(_decode_range, tasks)) == n
            elapsed = time.perf_counter() - started
            best = elapsed if best is None else min(best, elapsed)
    return {"processes": processes, "images": n, "best_of_rounds": rounds, "seconds": round(best, 4),
            "images_per_s": round(n / best, 1)}


def gpu_decode(files: list[Path], size: int, batch: int, rounds: int) -> dict:
    """nvJPEG through torchvision: bytes -> uint8 CHW on the GPU (full resolution: no DCT downscale), then one
    antialiased resize to size x size and the normalisation: the same float32 [3, S, S] the CPU path makes."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:  # without it, torch is not even imported
        return skipped("torchvision is not installed here (its decode_jpeg is the GPU decoder measured)")
    try:
        import torch
        import torchvision
        from torchvision.io import decode_jpeg
    except Exception as e:  # noqa: BLE001
        return skipped(f"torch/torchvision are not importable here: {_short(e)}")
    if not torch.cuda.is_available():
        return skipped(f"torch {torch.__version__} sees no CUDA device")
    from schemas import ImagePreprocessing

    spec = ImagePreprocessing(size=size)
    mean = torch.tensor(spec.mean, device="cuda").view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device="cuda").view(1, 3, 1, 1)
    blobs = [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files]
    usable, failed = [], []
    for f, b in zip(files, blobs, strict=True):  # nvJPEG refuses some files (e.g. some progressive/CMYK ones)
        try:
            decode_jpeg(b, device="cuda", mode=torchvision.io.ImageReadMode.RGB)
            usable.append(b)
        except Exception as e:  # noqa: BLE001
            failed.append(f"{f.name}: {_short(e, 120)}")

    def one_pass() -> None:
        for s in range(0, len(usable), batch):
            decoded = decode_jpeg(usable[s:s + batch], device="cuda", mode=torchvision.io.ImageReadMode.RGB)
            for img in decoded:
                x = torch.nn.functional.interpolate(img.unsqueeze(0).float() / 255, size=(size, size),
                                                    mode="bilinear", antialias=True, align_corners=False)
                (x - mean) / std
        torch.cuda.synchronize()

    if not usable:
        return skipped(f"nvJPEG decoded none of the {len(files)} memes, e.g. {failed[:2]}")
    one_pass()
    best = None
    for _ in range(rounds):
        started = time.perf_counter()
        one_pass()
        elapsed = time.perf_counter() - started
        best = elapsed if best is None else min(best, elapsed)
    return {"images": len(usable), "batch": batch, "best_of_rounds": rounds, "seconds": round(best, 4),
            "images_per_s": round(len(usable) / best, 1), "refused_by_nvjpeg": len(failed),
            "refused_examples": failed[:3], "torch": torch.__version__, "torchvision": torchvision.__version__,
            "torch_cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(0),
            "note": "bytes already in host memory; includes the host->device copy, full-resolution decode, "
                    "per-image resize and normalisation; not the worker's header checks"}


def stage_decode(args, size: int) -> dict:
    folder, files = jpeg_files(args.images, args.decode_images)
    if not files:
        return skipped(f"no JPEG memes found in {[str(d) for d in meme_dirs(args.images)]} (carry a sample with "
                       f"`python bench/gpu/carry.py memes`)")
    out: dict = {"images_dir": str(folder), "images": len(files), "input_size": size,
                 "what": "bytes in memory -> the model's float32 [3, S, S] input; images/s, best of rounds",
                 "cpu": []}
    for n in args.decode_processes:
        try:
            out["cpu"].append(cpu_decode(files, size, n, args.rounds))
        except Exception as e:  # noqa: BLE001
            out["cpu"].append({"processes": n, **skipped(f"CPU decode failed: {_short(e)}")})
    if args.no_gpu_decode:
        out["gpu"] = skipped("not requested (--no-gpu-decode)")
    else:
        try:
            out["gpu"] = gpu_decode(files, size, args.gpu_decode_batch, args.rounds)
        except Exception as e:  # noqa: BLE001
            out["gpu"] = skipped(f"GPU decode failed: {_short(e)}")
    for name in ("nvidia.nvimgcodec", "nvidia.dali"):
        try:
            __import__(name)
            out[name] = "importable, not measured by this script (torchvision's nvJPEG is)"
        except Exception:  # noqa: BLE001
            out[name] = skipped(f"{name} is not installed (no wheel carried)")
    return out


# ---------------------------------------------------------------------------------------------------- end to end


class Dmon:
    """`nvidia-smi dmon -s u` (SM and memory utilisation per second) while a phase runs; nothing without a GPU."""

    def __init__(self, path: Path) -> None:
        self.path, self.proc = path, None

    def __enter__(self) -> "Dmon":
        if shutil.which("nvidia-smi") and gpus():
            self.proc = subprocess.Popen(["nvidia-smi", "dmon", "-s", "u", "-d", "1"], stdout=self.path.open("w"),
                                         stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)

    def summary(self) -> dict:
        if self.proc is None:
            return skipped("no GPU (nvidia-smi lists none)")
        sm = []
        for line in self.path.read_text().splitlines():
            parts = line.split()
            if parts and not line.startswith("#") and len(parts) > 2 and parts[1].isdigit():
                sm.append(int(parts[1]))
        if not sm:
            return skipped("nvidia-smi dmon printed no samples")
        return {"samples": len(sm), "sm_util_pct_median": statistics.median(sm), "sm_util_pct_max": max(sm)}


def _wait_all_committed(bootstrap: str, group: str, topic: str, partitions: int, total: int, timeout_s: float):
    from bench.bench_hotpath import committed_all

    deadline = time.monotonic() + timeout_s
    while not committed_all(bootstrap, group, topic, partitions, total):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not all {total} offsets of {topic} committed after {timeout_s:.0f}s")
        time.sleep(0.5)


def e2e_phase(stack, bundle_path: Path, workdir: Path, env: dict, processes: int, n: int,
              rate_per_s: float | None, dmon_path: Path) -> dict:
    from bench.bench_hotpath import output_stamps, rate, records
    from bench.bench_latency import read_verdicts
    from bench.common import flush_cache, percentile, produce, start_worker
    from consumer.kafka.topics import ensure_topics
    from testkit.topics import Topics

    flush_cache(stack)
    topics = Topics.unique()
    partitions = max(2, processes)
    ensure_topics(stack.bootstrap, [topics.input, topics.output, topics.dlq], partitions)
    recs = records(topics.group, n, None, True)  # unique text per event: every one a cache miss
    argv = ["-m", "consumer.cli", "worker", "--processes", str(processes)] if processes > 1 else None
    worker_env = {**env, "MEMEGUARD_TOPIC_PARTITIONS": str(partitions)}
    if rate_per_s is None:
        produce(stack, topics.input, recs)  # the backlog is there before the worker starts
    worker = start_worker(stack, bundle_path, topics, workdir, argv, **worker_env)
    try:
        with Dmon(dmon_path) as dmon:
            sent = produce(stack, topics.input, recs, rate_per_s=rate_per_s) if rate_per_s else {}
            _wait_all_committed(stack.bootstrap, topics.group, topics.input, partitions, n, timeout_s=600)
    finally:
        worker.stop(timeout_s=60)
    if rate_per_s is None:
        stamps, ids = output_stamps(stack.bootstrap, [topics.output, topics.dlq], n)
        missing = {r[0] for r in recs} - ids
        if missing:
            raise AssertionError(f"{len(missing)} events without an output")
        return {"events": n, "memes_per_s": rate(stamps), "gpu": dmon.summary()}
    verdicts = read_verdicts(stack.bootstrap, topics.output, n)
    latency = [verdicts[i][0] - sent[i] for i in sent if i in verdicts]
    stages: dict[str, list[float]] = {}
    for _, timings in verdicts.values():
        for k, v in timings.items():
            if isinstance(v, int | float):
                stages.setdefault(k, []).append(float(v))
    return {"offered_per_s": round(rate_per_s, 2), "events": n, "verdicts": len(latency),
            "p50_ms": percentile(latency, 50) if latency else None,
            "p99_ms": percentile(latency, 99) if latency else None,
            "median_timings_ms": {k: round(statistics.median(v), 2) for k, v in sorted(stages.items())},
            "gpu": dmon.summary()}


def stage_e2e(args) -> dict:
    if not args.e2e:
        return skipped("not requested (run with --e2e)")
    bundle_path = serving_bundle(args)
    if bundle_path is None:
        return skipped("no bundle to serve: neither the default (fp32) nor an fp16 one is here")
    try:
        from bench.common import dev_stack
        from testkit.records import SEMEVAL
    except Exception as e:  # noqa: BLE001 (the GPU machine may lack the service's dependencies)
        return skipped(f"the service's modules are not importable here: {_short(e)}")
    if not (SEMEVAL / "train.json").is_file():
        return skipped(f"the SemEval memes the bench produces are not on this machine ({SEMEVAL})")
    env = {"MEMEGUARD_PROVIDERS": args.e2e_provider, "MEMEGUARD_MAX_BATCH": str(args.e2e_max_batch),
           **dict(kv.split("=", 1) for kv in args.e2e_env)}
    out: dict = {"bundle": str(bundle_path), "worker_processes": args.e2e_processes,
                 "worker_settings": env, "other_settings": "the worker's defaults (README, worker settings)",
                 "events": "unique memes (file:// SemEval images, unique text): every one a cache miss"}
    try:
        with dev_stack() as stack, tempfile.TemporaryDirectory(prefix="mg-gpu-e2e-") as tmp:
            out["broker"] = stack.broker
            peak = e2e_phase(stack, bundle_path, Path(tmp), env, args.e2e_processes, args.e2e_events, None,
                             Path(tmp) / "dmon-peak.txt")
            out["peak"] = peak
            half = peak["memes_per_s"] / 2
            n = max(10, min(int(half * args.e2e_seconds), args.e2e_paced_max))
            out["half_load"] = e2e_phase(stack, bundle_path, Path(tmp), env, args.e2e_processes, n, half,
                                         Path(tmp) / "dmon-half.txt")
    except Exception as e:  # noqa: BLE001 (no Java/Kafka, no redis-server, a worker that did not start, …)
        out.update(skipped(f"end to end could not run: {_short(e)}"))
    return out


# ---------------------------------------------------------------------------------------------------- main


def default_out(dry_run: bool) -> Path:
    if gpus() and not dry_run:
        return REPO / "bench" / "results" / "gpu.json"
    return Path(tempfile.mkdtemp(prefix="mg-gpu-dry-")) / "gpu.json"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true",
                   help="tiny: batches 1 2, 8 memes, short timings, one round, 20 events (GPU providers where they exist)")
    p.add_argument("--bundle", help="fp32 bundle (default: .cache/bundles/default, else the stash's)")
    p.add_argument("--fp16-bundle", help="fp16 bundle (default: .cache/bundles/default-fp16, else the stash's)")
    p.add_argument("--providers", nargs="+", choices=list(PROVIDER_NAMES), default=["cpu", "cuda", "tensorrt"],
                   help="cpu first: the others' parity is against its outputs")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    p.add_argument("--cpu-batches", type=int, nargs="+", default=[1, 16],
                   help="batch sizes on the CPU provider (the worker's CPU calls stop at 16: CPU_CALL_BATCH)")
    p.add_argument("--seconds", type=float, default=2.0, help="time per (provider, batch) measurement")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: one per core)")
    p.add_argument("--stages", nargs="+", choices=["providers", "decode", "e2e"],
                   default=["providers", "decode", "e2e"])
    p.add_argument("--images", help="folder of real memes (default: the shared SemEval images, else the stash's)")
    p.add_argument("--decode-images", type=int, default=400)
    p.add_argument("--decode-processes", type=int, nargs="+", default=None,
                   help="CPU decode process counts (default: 1 and every core)")
    p.add_argument("--gpu-decode-batch", type=int, default=64)
    p.add_argument("--no-gpu-decode", action="store_true")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--e2e", action="store_true", help="run the end-to-end stage (broker + Redis + workers)")
    p.add_argument("--e2e-processes", type=int, default=4)
    p.add_argument("--e2e-events", type=int, default=20000, help="backlog for the peak (all misses)")
    p.add_argument("--e2e-paced-max", type=int, default=100000, help="at most this many events in the paced run")
    p.add_argument("--e2e-seconds", type=float, default=20.0, help="length of the half-load paced run")
    p.add_argument("--e2e-provider", default="auto", help="MEMEGUARD_PROVIDERS for the workers")
    p.add_argument("--e2e-max-batch", type=int, default=256, help="MEMEGUARD_MAX_BATCH for the workers")
    p.add_argument("--e2e-env", action="append", default=[], metavar="KEY=VALUE", help="more worker settings")
    p.add_argument("--out", type=Path, help="JSON result (default: bench/results/gpu.json on a GPU, else a temp file)")
    p.add_argument("--command-line", help="what to record as the command (run.sh passes its own)")
    args = p.parse_args(argv)
    if args.dry_run:
        args.batches = [b for b in args.batches if b <= 2] if args.batches != [1, 16, 64, 256] else [1, 2]
        args.cpu_batches = [b for b in args.cpu_batches if b <= 2] if args.cpu_batches != [1, 16] else [1, 2]
        args.seconds, args.rounds = min(args.seconds, 0.2), 1
        args.decode_images = min(args.decode_images, 8)
        args.decode_processes = args.decode_processes or [1, 2]
        args.e2e_processes, args.e2e_events, args.e2e_seconds = 1, min(args.e2e_events, 20), min(args.e2e_seconds, 2)
        args.e2e_paced_max = min(args.e2e_paced_max, 20)
        args.e2e_provider, args.e2e_max_batch = "cpu", min(args.e2e_max_batch, 16)
        args.threads = args.threads or 1
    args.decode_processes = args.decode_processes or sorted({1, os.cpu_count() or 1})
    return args


def serving_bundle(args) -> Path | None:
    """The fp32 default bundle, else the fp16 one (the first GPU lease may carry only that)."""
    search = not args.dry_run
    return find_bundle(args.bundle, "default", search) or find_bundle(args.fp16_bundle, "default-fp16", search)


def input_size(args) -> int:
    path = serving_bundle(args)
    if path is not None and (path / "manifest.json").is_file():
        image = json.loads((path / "manifest.json").read_text()).get("image") or {}
        return int(image.get("size", 224))
    return 224


def write(doc: dict, out_path: Path) -> None:
    """The result, and a copy in the device tool's $OUT when there is one (only what is there comes back)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=2) + "\n")
    device_out = os.environ.get("OUT")
    if device_out and Path(device_out).is_dir() and Path(device_out).resolve() != out_path.parent.resolve():
        shutil.copyfile(out_path, Path(device_out) / out_path.name)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out_path = args.out or default_out(args.dry_run)
    command = args.command_line or shlex.join([Path(sys.executable).name, "bench/gpu/measure.py",
                                               *(sys.argv[1:] if argv is None else argv)])
    doc: dict = {"command": command, "machine": machine(), "dry_run": args.dry_run,
                 "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                 "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    stages = {"providers": lambda: stage_providers(args), "decode": lambda: stage_decode(args, input_size(args)),
              "e2e": lambda: stage_e2e(args)}
    for name, run in stages.items():
        started = time.perf_counter()
        print(f"[gpu bench] stage {name} …", file=sys.stderr, flush=True)
        try:
            doc[name] = run() if name in args.stages else skipped(f"not among --stages {args.stages}")
        except Exception as e:  # noqa: BLE001 (one broken stage must not lose the others' figures)
            doc[name] = skipped(f"the stage failed: {_short(e)}")
        doc[name]["stage_seconds"] = round(time.perf_counter() - started, 2)
        write({**doc, "finished_at": None}, out_path)  # after every stage: a timeout keeps what was measured
    doc["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    doc["load_avg_at_end"] = list(os.getloadavg())
    write(doc, out_path)
    print(f"wrote {out_path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
