"""Soak: 100,000 events through one worker; the worker's resident memory sampled every few seconds; zero lost.

On this CPU unique memes run at tens per second, so the soak repeats the 750 shipped memes: after the first
pass they are cache hits. So that inference (and ONNX Runtime's memory) stays in play the whole time, a
steady fraction of the events are misses (`--miss-fraction`, 1% by default), arriving as runs of `--batch`
events with new text each (one full miss batch per 1/fraction batches), not one stray miss per batch.
Outputs are counted by event id. RSS is the worker process's VmRSS (the process the bench starts).
Run: `python -m bench.bench_soak [--n 100000 --miss-fraction 0.01 --max-minutes 15]`.
"""

import argparse
import json
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bench.common import bundle, dev_stack, event_records, flush_cache, now_ms, produce, start_worker, table, write_result
from testkit.records import memes
from testkit.topics import Topics


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def count_outputs(bootstrap: str, topics: Topics, n: int, deadline: float) -> tuple[Counter, int, int]:
    """Reads both output topics until n distinct ids have been seen or the deadline passes."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "soak-reader", "enable.auto.commit": False})
    counts: Counter[str] = Counter()
    dead_letters = 0
    last_ms = 0
    try:
        while time.monotonic() < deadline:
            metadata = consumer.list_topics(timeout=10)
            if topics.output in metadata.topics:
                break
            time.sleep(1)
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in (topics.output, topics.dlq)
                         if t in metadata.topics for p in metadata.topics[t].partitions])
        while len(counts) < n and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error():
                    continue
                counts[json.loads(msg.value()).get("event_id")] += 1
                dead_letters += msg.topic() == topics.dlq
                last_ms = max(last_ms, msg.timestamp()[1])
    finally:
        consumer.close()
    return counts, dead_letters, last_ms


def with_misses(records: list[tuple[str, bytes, bytes]], fraction: float, run: int) -> tuple[list, int]:
    """Every 1/fraction-th run of `run` events gets new text per event (a new content hash: a cache miss)."""
    if fraction <= 0:
        return records, 0
    every = max(1, round(1 / fraction))
    out, misses = [], 0
    for n, (event_id, key, value) in enumerate(records):
        if (n // run) % every == every - 1:
            event = json.loads(value)
            event["text"] = f"{event.get('text') or ''} #soak-{n}"
            value = json.dumps(event).encode()
            misses += 1
        out.append((event_id, key, value))
    return out, misses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--miss-fraction", type=float, default=0.01, help="steady share of cache misses")
    parser.add_argument("--max-minutes", type=float, default=15.0)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra worker environment, e.g. MEMEGUARD_MAX_BATCH=32 (stored with the result)")
    parser.add_argument("--out", default="bench_soak", help="result file name in bench/results/")
    args = parser.parse_args(argv)
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    bundle_path, bundle_name = bundle()
    unique = len(memes())
    samples: list[tuple[float, float]] = []
    with dev_stack() as stack, tempfile.TemporaryDirectory() as tmp:
        flush_cache(stack)
        topics = Topics.unique()
        records, steady_misses = with_misses(event_records(0, args.n, topics.group, unique=unique),
                                             args.miss_fraction, args.batch)
        worker = start_worker(stack, bundle_path, topics, Path(tmp), MEMEGUARD_MAX_BATCH=str(args.batch),
                              MEMEGUARD_MAX_WAIT_S="0.5", MEMEGUARD_PROVIDERS="cpu", **extra_env)
        pid = worker.proc.pid
        start_ms, t0 = now_ms(), time.monotonic()
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set() and worker.proc.poll() is None:
                samples.append((round(time.monotonic() - t0, 1), rss_mib(pid)))
                stop.wait(args.sample_s)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            produce(stack, topics.input, records)
            deadline = time.monotonic() + args.max_minutes * 60
            counts, dead_letters, last_ms = count_outputs(stack.bootstrap, topics, args.n, deadline)
        finally:
            stop.set()
            sampler.join()
            exit_code = worker.stop()
    ids = {r[0] for r in records}
    lost = len(ids - set(counts))
    unexpected = len(set(counts) - ids)
    rss = [r for _, r in samples]
    result = {
        "bundle": bundle_name, "bundle_path": str(bundle_path), "events": args.n, "unique_contents": unique,
        "duplicate_rate": round(1 - (unique + steady_misses) / args.n, 4), "max_batch": args.batch,
        "worker_env": extra_env,
        "workload": f"the {unique} shipped memes repeated (first pass: misses, then hits), plus a steady "
                    f"{args.miss_fraction:.1%} of misses (new text) in runs of {args.batch} events: "
                    f"{steady_misses} steady misses, {unique + steady_misses} misses in all",
        "steady_misses": steady_misses,
        "verdicts_and_dead_letters_distinct": len(counts), "dead_letters": dead_letters,
        "duplicates_before_dedup": sum(counts.values()) - len(counts), "lost": lost, "unexpected_ids": unexpected,
        "finished": lost == 0, "worker_exit_code": exit_code,
        "note": "all events have a verdict" if lost == 0 else
                f"stopped after --max-minutes {args.max_minutes}: {lost} events not yet processed (not lost: their "
                "offsets were never committed)",
        "memes_per_s": round(len(counts) / max((last_ms - start_ms) / 1000, 1e-3), 1),
        "duration_s": round((last_ms - start_ms) / 1000, 1),
        "rss_mib": {"start": rss[0], "end": rss[-1], "peak": max(rss), "samples": len(rss),
                    "after_warmup_min": min(rss[len(rss) // 10:]) if rss else None,
                    "after_warmup_max": max(rss[len(rss) // 10:]) if rss else None},
        "rss_samples_s_mib": samples,
    }
    table(f"soak ({bundle_name} bundle)", ["events", "distinct outputs", "lost", "memes/s", "RSS start/end/peak MiB"],
          [[args.n, len(counts), lost, result["memes_per_s"],
            f"{result['rss_mib']['start']} / {result['rss_mib']['end']} / {result['rss_mib']['peak']}"]])
    write_result(args.out, result)


if __name__ == "__main__":
    main()
