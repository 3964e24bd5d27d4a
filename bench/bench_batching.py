"""Batching: memes/s and end-to-end latency of the worker across max_batch and max_wait, with a PNG curve.

Each configuration gets a fresh worker, an empty cache and unique memes, in two phases:
  1. paced: events produced at a steady rate below capacity -> p50/p99 latency (produce -> verdict on broker);
  2. backlog: a block produced at once -> memes/s.
Run: `python -m bench.bench_batching [--paced 40 --rate 6 --backlog 96]`.
"""

import argparse
import os
import tempfile
from pathlib import Path

from bench.common import (
    RESULTS,
    bundle,
    collect,
    dev_stack,
    event_records,
    flush_cache,
    now_ms,
    percentile,
    produce,
    start_worker,
    table,
    throughput,
    write_result,
)
from testkit.topics import Topics

BATCHES = [1, 8, 32, 64]
WAITS = [0.05, 0.5]


def measure(stack, bundle_path: Path, batch: int, wait: float, first: int, args, workdir: Path) -> dict:
    flush_cache(stack)
    topics = Topics.unique()
    worker = start_worker(stack, bundle_path, topics, workdir, MEMEGUARD_MAX_BATCH=str(batch),
                          MEMEGUARD_MAX_WAIT_S=str(wait), MEMEGUARD_PROVIDERS="cpu")
    try:
        paced = event_records(first, args.paced, f"{topics.group}-paced")
        sent = produce(stack, topics.input, paced, rate_per_s=args.rate)
        reader = collect(stack, topics, set(sent))
        latencies = [o.timestamp_ms - sent[o.event_id] for o in reader.outputs if o.event_id in sent]
        reader.close()
        block = event_records(first + args.paced, args.backlog, f"{topics.group}-block")
        start_ms = now_ms()
        produce(stack, topics.input, block)
        ids = {r[0] for r in block}
        reader = collect(stack, topics, ids)
        rate = throughput(reader, ids, start_ms)
        reader.close()
    finally:
        worker.stop()
    return {"max_batch": batch, "max_wait_s": wait, "memes_per_s": rate,
            "latency_p50_ms": percentile(latencies, 50), "latency_p99_ms": percentile(latencies, 99)}


def plot(results: list[dict], path: Path, title: str) -> None:
    os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for wait in sorted({r["max_wait_s"] for r in results}):
        rs = [r for r in results if r["max_wait_s"] == wait]
        xs = [r["max_batch"] for r in rs]
        left.plot(xs, [r["memes_per_s"] for r in rs], marker="o", label=f"max_wait {wait}s")
        right.plot(xs, [r["latency_p50_ms"] for r in rs], marker="o", label=f"p50, max_wait {wait}s")
        right.plot(xs, [r["latency_p99_ms"] for r in rs], marker="x", linestyle="--", label=f"p99, max_wait {wait}s")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(BATCHES, [str(b) for b in BATCHES])
        ax.set_xlabel("max_batch")
        ax.legend(fontsize=8)
    left.set_ylabel("memes/s (backlog)")
    right.set_ylabel("end-to-end latency, ms (paced input)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--paced", type=int, default=40, help="events in the paced (latency) phase")
    parser.add_argument("--rate", type=float, default=6.0, help="events/s in the paced phase")
    parser.add_argument("--backlog", type=int, default=96, help="events in the backlog (throughput) phase")
    args = parser.parse_args(argv)
    bundle_path, bundle_name = bundle()
    results = []
    with dev_stack() as stack, tempfile.TemporaryDirectory() as tmp:
        first = 0
        for wait in WAITS:
            for batch in BATCHES:
                results.append(measure(stack, bundle_path, batch, wait, first, args, Path(tmp)))
                first += args.paced + args.backlog
    table(f"batching ({bundle_name} bundle)", ["max_batch", "max_wait s", "memes/s", "p50 ms", "p99 ms"],
          [[r["max_batch"], r["max_wait_s"], r["memes_per_s"], r["latency_p50_ms"], r["latency_p99_ms"]]
           for r in results])
    png = RESULTS / "batching.png"
    plot(results, png, f"memeguard worker, {bundle_name} bundle, CPU")
    write_result("bench_batching", {
        "bundle": bundle_name, "bundle_path": str(bundle_path), "plot": str(png.relative_to(RESULTS.parent.parent)),
        "paced_events": args.paced, "paced_rate_per_s": args.rate, "backlog_events": args.backlog,
        "latency": "broker timestamp of the verdict minus the produce time of its event",
        "results": results,
    })


if __name__ == "__main__":
    main()
