"""Resident memory of one worker's model under load, per ONNX Runtime memory mode (issue 16, part 5).

    .venv/bin/python bench/bench_memory.py --batches 120      # -> bench/results/memory.json

Drives `BundleRuntime` directly (not the full worker: no Kafka, Redis, fetch or decode), one fresh process
per memory mode (consumer.core.runtime.MEMORY_MODES), one after the other, same workload, so the modes are compared
side by side in one run. The workload is what the worker's inference sees: batches of 64 real memes (dev and
train images, decoded once beforehand to the model's tensors) with real meme texts drawn at random, so the
padded sequence length changes with every batch; every fourth batch is a partial one of 1-64 memes (a batch
closed by max_wait_s). RSS (VmRSS from /proc) is sampled every `--every` batches. "After warm-up" is the RSS
once the first 10 % of the batches have run; "growth" is the last sample minus that.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data" / "semeval2021_task6"
BATCH = 64
RSS_LIMIT_MIB = 800  # issue 16: per worker at batch 64, after warm-up, flat


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(mode: str, bundle: Path, batches: int, every: int, threads: int, seed: int) -> dict:
    from consumer.core.images import decode_image
    from consumer.core.runtime import BundleRuntime

    start_rss = rss_mib()
    runtime = BundleRuntime.load(bundle, intra_op_threads=threads, memory=mode)
    runtime.warmup()
    spec = runtime.manifest.image
    records = json.loads((DATA / "dev.json").read_text()) + json.loads((DATA / "train.json").read_text())
    rng = random.Random(seed)
    pool = rng.sample(records, 96)
    tensors = [runtime.feeds([decode_image((DATA / "images" / r["image"]).read_bytes(), 40_000_000,
                                            target=spec.size)], ["x"])[spec.input_name][0] for r in pool]
    texts = [r.get("text") or "" for r in records]
    loaded_rss = rss_mib()
    samples, times = [], []
    for i in range(batches):
        size = rng.randint(1, BATCH) if i % 4 == 3 else BATCH
        picks = [rng.randrange(len(tensors)) for _ in range(size)]
        t = time.perf_counter()
        runtime.predict([tensors[k] for k in picks], [rng.choice(texts) for _ in range(size)])
        times.append(time.perf_counter() - t)
        if (i + 1) % every == 0 or i == batches - 1:
            samples.append({"batch": i + 1, "rss_mib": round(rss_mib(), 1)})
    warm = next(s for s in samples if s["batch"] >= max(1, batches // 10))
    full = [t for t, i in zip(times, range(batches), strict=True) if i % 4 != 3]
    return {
        "mode": mode, "model": runtime.version, "provider": runtime.provider, "intra_op_threads": threads,
        "rss_mib_python_start": round(start_rss, 1), "rss_mib_loaded": round(loaded_rss, 1),
        "rss_mib_after_warmup": warm["rss_mib"], "rss_mib_max": max(s["rss_mib"] for s in samples),
        "rss_mib_last": samples[-1]["rss_mib"],
        "growth_after_warmup_mib": round(samples[-1]["rss_mib"] - warm["rss_mib"], 1),
        "median_ms_per_full_batch": round(1000 * float(np.median(full)), 1),
        "memes_per_s_full_batches": round(BATCH / float(np.median(full)), 1),
        "distinct_sequence_lengths_note": "texts drawn at random: the padded length changes every batch",
        "samples": samples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=REPO / ".cache" / "bundles" / "default")
    parser.add_argument("--batches", type=int, default=120)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = one per core)")
    parser.add_argument("--modes", default="ort_default,no_mem_pattern,bounded,no_arena")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "memory.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.bundle, args.batches, args.every, args.threads, seed=7)))
        return 0
    from bench.common import machine

    if not (args.bundle / "manifest.json").exists():
        sys.exit(f"{args.bundle} is not a bundle: build it with `make bundle`")
    result = {"command": " ".join([".venv/bin/python", *sys.argv]), "machine": machine(),
              "drives": "BundleRuntime.predict directly (not the full worker), one process per mode, in turn",
              "batch": BATCH, "batches": args.batches, "rss_limit_mib": RSS_LIMIT_MIB, "modes": []}
    for mode in args.modes.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--bundle", str(args.bundle),
                              "--batches", str(args.batches), "--every", str(args.every),
                              "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["load_avg_after"] = list(os.getloadavg())
        result["modes"].append(row)
        print(f"{mode:15s} loaded {row['rss_mib_loaded']:7.1f}  after warm-up {row['rss_mib_after_warmup']:7.1f}  "
              f"max {row['rss_mib_max']:7.1f}  last {row['rss_mib_last']:7.1f} MiB  "
              f"{row['median_ms_per_full_batch']:7.1f} ms/batch of {BATCH}", flush=True)
    base = next((m for m in result["modes"] if m["mode"] == "ort_default"), None)
    for m in result["modes"]:
        m["within_limit"] = m["rss_mib_max"] <= RSS_LIMIT_MIB
        if base:
            m["speed_vs_ort_default"] = round(base["median_ms_per_full_batch"] / m["median_ms_per_full_batch"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
