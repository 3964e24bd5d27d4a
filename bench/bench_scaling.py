"""Worker throughput against the model alone, pipelined or not, and with 1..N processes (issue 16, parts 2, 3).

One run, one embedded broker, the same unique memes (every event a cache miss), default worker settings:

- inference only: the bundle's runtime over pre-decoded model inputs (decoded before the clock starts) in
  batches of the worker's `max_batch`, in this process with the worker's threads: the ceiling;
- worker, `MEMEGUARD_PIPELINE_DEPTH=1`: one batch at a time (the worker before issue 16);
- worker, depth 2 (the default): the next batch is fetched, looked up and decoded during inference;
- `memeguard worker --processes N` for N = 2.. : N group members, the cores shared out between their sessions.

Uses the trained default bundle when it has been built (.cache/bundles/default), else the tiny one.
Run: `python -m bench.bench_scaling [--n 300 --max-processes 2]` (about 3 minutes on 2 cores).
"""

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from bench.bench_hotpath import output_stamps, rate, wait_committed
from bench.common import bundle, dev_stack, event_records, flush_cache, produce, start_worker, table, write_result
from consumer.core.images import DecodePolicy, ImageDecoder
from consumer.core.runtime import BundleRuntime
from consumer.kafka.topics import ensure_topics
from consumer.settings import WorkerSettings
from testkit.records import memes
from testkit.topics import Topics


def inference_only(bundle_path: Path, n: int, batch: int) -> float:
    runtime = BundleRuntime.load(bundle_path, providers="cpu", intra_op_threads=0)
    runtime.warmup()
    settings = WorkerSettings()
    decoder = ImageDecoder(DecodePolicy.from_settings(settings))
    spec = runtime.manifest.image
    pool = memes()[:n]
    blobs = [m.image_path.read_bytes() for m in pool]
    inputs = asyncio.run(decoder.decode_tensors(blobs, settings.max_image_pixels, spec))  # what the worker feeds the model
    texts = [m.text or "" for m in pool]
    start = time.perf_counter()
    for i in range(0, n, batch):
        runtime.predict(inputs[i:i + batch], texts[i:i + batch])
    return round(n / (time.perf_counter() - start), 2)


def worker_rate(stack, bundle_path: Path, n: int, first: int, workdir: Path, processes: int, depth: int) -> dict:
    flush_cache(stack)
    topics = Topics.unique()
    ensure_topics(stack.bootstrap, [topics.input, topics.output, topics.dlq], 2)
    records = event_records(first, n, topics.group)
    if processes == 1:
        produce(stack, topics.input, records)  # a backlog: the worker sets the pace
    argv = ["-m", "consumer.cli", "worker", *(["--processes", str(processes)] if processes > 1 else [])]
    worker = start_worker(stack, bundle_path, topics, workdir, argv=argv, MEMEGUARD_PROVIDERS="cpu",
                          MEMEGUARD_PIPELINE_DEPTH=str(depth))
    try:
        if processes > 1:  # once every member is ready: the first one must not take the backlog alone meanwhile
            produce(stack, topics.input, records)
        wait_committed(stack.bootstrap, topics.group, topics.input, n, timeout_s=900)
    finally:
        worker.stop(timeout_s=60)
    stamps, ids = output_stamps(stack.bootstrap, [topics.output, topics.dlq], n)
    assert {r[0] for r in records} <= ids, "an event has no output"
    return {"processes": processes, "pipeline_depth": depth, "events": n, "memes_per_s": rate(stamps),
            "load_avg_after": list(os.getloadavg())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=300, help="unique memes per measurement")
    parser.add_argument("--max-processes", type=int, default=2)
    args = parser.parse_args(argv)
    bundle_path, bundle_name = bundle()
    batch = WorkerSettings().max_batch
    ceiling = inference_only(bundle_path, args.n, batch)
    runs = []
    with dev_stack() as stack, tempfile.TemporaryDirectory() as tmp:
        configs = [(1, 1), (1, 2)] + [(p, 2) for p in range(2, args.max_processes + 1)]
        for k, (processes, depth) in enumerate(configs):
            # Each run sees memes the others did not (the OS page cache aside, nothing is warm).
            runs.append(worker_rate(stack, bundle_path, args.n, (k * args.n) % len(memes()), Path(tmp),
                                    processes, depth))
    for r in runs:
        r["vs_inference_only"] = round(r["memes_per_s"] / ceiling, 3)
    table(f"worker vs inference only ({bundle_name} bundle, {args.n} unique memes, batch {batch}, CPU)",
          ["processes", "pipeline depth", "memes/s", "vs inference only"],
          [["inference only", "-", ceiling, 1.0]]
          + [[r["processes"], r["pipeline_depth"], r["memes_per_s"], r["vs_inference_only"]] for r in runs])
    write_result("scaling", {
        "bundle": bundle_name, "bundle_path": str(bundle_path), "unique_memes": args.n, "batch": batch,
        "inference_only_memes_per_s": ceiling,
        "inference_only": "BundleRuntime.predict over inputs decoded beforehand, batches of max_batch, "
                          "intra_op_threads=0 (one per core), in the bench process",
        "worker": "default settings, CPU provider, backlog pre-produced (with N processes: produced once all N are "
                  "consuming, faster than they consume), Redis flushed (all misses), 2 partitions; "
                  "throughput = outputs over broker time from the first output to the last",
        "runs": runs, "target_vs_inference_only": 0.95,
    })


if __name__ == "__main__":
    main()
