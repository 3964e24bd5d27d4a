"""Streaming overhead: memes/s of the full worker (broker -> verdicts) vs a plain offline batch loop.

The offline loop is what a user would write instead: read each image file, decode it, and call the same
bundle's runtime on batches of the same size. Both see the same unique memes (no cache hits), one after
the other on this machine. Run: `python -m bench.bench_streaming [--n 192]`.
"""

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import (
    bundle,
    collect,
    dev_stack,
    event_records,
    flush_cache,
    now_ms,
    produce,
    start_worker,
    table,
    throughput,
    write_result,
)
from consumer.core.images import decode_image
from consumer.core.runtime import BundleRuntime
from testkit.records import memes
from testkit.topics import Topics


def offline_memes_per_s(bundle_path: Path, n: int, batch: int, first: int = 0) -> float:
    runtime = BundleRuntime.load(bundle_path, providers="cpu", intra_op_threads=0, max_batch=max(batch, 64))
    runtime.warmup()
    pool = memes()[first:first + n]
    start = time.perf_counter()
    for i in range(0, n, batch):
        chunk = pool[i:i + batch]
        images = [decode_image(m.image_path.read_bytes(), 40_000_000) for m in chunk]
        runtime.predict(images, [m.text or "" for m in chunk])
    return round(n / (time.perf_counter() - start), 2)


def worker_memes_per_s(stack, bundle_path: Path, n: int, batch: int, max_wait_s: float, workdir: Path,
                       first: int = 0) -> float:
    flush_cache(stack)
    topics = Topics.unique()
    records = event_records(first, n, topics.group)
    produce(stack, topics.input, records)  # a backlog: the worker, not the producer, sets the pace
    worker = start_worker(stack, bundle_path, topics, workdir, MEMEGUARD_MAX_BATCH=str(batch),
                          MEMEGUARD_MAX_WAIT_S=str(max_wait_s), MEMEGUARD_PROVIDERS="cpu")
    ready_ms = now_ms()
    try:
        ids = {r[0] for r in records}
        reader = collect(stack, topics, ids)
        rate = throughput(reader, ids, ready_ms)
        reader.close()
        return rate
    finally:
        worker.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=192, help="unique memes per measurement")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64])
    args = parser.parse_args(argv)
    bundle_path, bundle_name = bundle()
    rows, results = [], []
    with dev_stack() as stack, tempfile.TemporaryDirectory() as tmp:
        for batch in args.batches:
            offline = offline_memes_per_s(bundle_path, args.n, batch)
            streaming = worker_memes_per_s(stack, bundle_path, args.n, batch, 0.5, Path(tmp))
            ratio = round(streaming / offline, 3)
            results.append({"batch": batch, "offline_memes_per_s": offline, "worker_memes_per_s": streaming,
                            "ratio": ratio})
            rows.append([batch, offline, streaming, ratio])
    table(f"streaming overhead ({bundle_name} bundle, {args.n} unique memes)",
          ["batch", "offline memes/s", "worker memes/s", "worker / offline"], rows)
    best = max(results, key=lambda r: r["worker_memes_per_s"])
    write_result("bench_streaming", {
        "bundle": bundle_name, "bundle_path": str(bundle_path), "unique_memes": args.n,
        "worker": "max_wait_s=0.5, backlog pre-produced, Redis flushed (all misses), CPU provider",
        "offline": "read file + decode + BundleRuntime.predict per batch, same bundle and threads",
        "results": results, "best": best, "target_ratio": 0.8,
    })


if __name__ == "__main__":
    main()
