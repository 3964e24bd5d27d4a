"""Post -> verdict latency against offered load (issue 16, part 8).

One embedded broker, the real worker, every event a cache miss (real meme JPEGs via file://, unique text):

1. peak: a pre-produced backlog, outputs over broker time, with the settings under test;
2. paced runs at fractions of the last configuration's peak (default 0.25, 0.5, 0.75; the same offered
   loads for every configuration): latency = the verdict's timestamp (set by
   the worker's producer when it publishes) minus the event's (set by the bench's producer when it sends),
   same clock. Beside p50/p99, where the time goes, from each verdict's `timings_ms`: `processing` (the
   batch's prepare + inference + cache store) and `waiting` (everything else: the consumer's fetch, the
   batch window `max_wait_s`, the previous batch still in flight, the publish).

Each configuration is a set of MEMEGUARD_* overrides (`--config name:VAR=value,VAR=value`); the default
compares one batch at a time with the 0.2 s batch window of git HEAD before issue 16 against the current
defaults (the outputs go through librdkafka in both: that part is not a setting).
Run: `python -m bench.bench_latency [--seconds 15]` (about 4 minutes on 2 cores with the default bundle).
"""

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bench.bench_hotpath import rate, records, wait_committed
from bench.common import bundle, dev_stack, flush_cache, percentile, produce, start_worker, table, write_result
from consumer.kafka.topics import ensure_topics
from testkit.topics import Topics

CONFIGS = {
    "one batch at a time, 0.2 s window": {"MEMEGUARD_PIPELINE_DEPTH": "1", "MEMEGUARD_MAX_WAIT_S": "0.2"},
    "defaults": {},
}


def read_verdicts(bootstrap: str, topic: str, expect: int) -> dict[str, tuple[int, dict]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "latency-reader", "enable.auto.commit": False})
    metadata = consumer.list_topics(timeout=10)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.topics[topic].partitions])
    out: dict[str, tuple[int, dict]] = {}
    try:
        idle = 0
        while len(out) < expect and idle < 20:
            batch = consumer.consume(1000, 0.5)
            idle = 0 if batch else idle + 1
            for msg in batch:
                if not msg.error():
                    v = json.loads(msg.value())
                    out[v["event_id"]] = (msg.timestamp()[1], v.get("timings_ms", {}))
    finally:
        consumer.close()
    return out


def run(stack, bundle_path: Path, workdir: Path, env: dict[str, str], n: int, rate_per_s: float | None) -> dict:
    flush_cache(stack)
    topics = Topics.unique()
    ensure_topics(stack.bootstrap, [topics.input, topics.output, topics.dlq], 2)
    recs = records(topics.group, n, None, True)
    worker = start_worker(stack, bundle_path, topics, workdir, MEMEGUARD_PROVIDERS="cpu", **env)
    try:
        sent = produce(stack, topics.input, recs, rate_per_s=rate_per_s)
        wait_committed(stack.bootstrap, topics.group, topics.input, n, timeout_s=600)
    finally:
        worker.stop(timeout_s=60)
    verdicts = read_verdicts(stack.bootstrap, topics.output, n)
    assert set(sent) <= set(verdicts), "an event has no verdict"
    if rate_per_s is None:
        return {"events": n, "memes_per_s": rate([ts for ts, _ in verdicts.values()])}
    order = sorted(sent, key=sent.get)  # send order: where in the run the slow events sit
    latency = [verdicts[i][0] - sent[i] for i in order]
    processing = [verdicts[i][1].get("total", 0.0) for i in order]
    waiting = [lat - proc for lat, proc in zip(latency, processing, strict=True)]
    slowest = sorted(range(len(order)), key=lambda k: latency[k], reverse=True)[:3]
    return {"offered_per_s": round(rate_per_s, 2), "events": n,
            "p50_ms": percentile(latency, 50), "p99_ms": percentile(latency, 99), "max_ms": max(latency),
            # With ~50-150 events a run, p99 is one or two events: which ones, and where their time went.
            "slowest": [{"sent_index": k, "latency_ms": latency[k], "processing_ms": round(processing[k], 1),
                         "timings_ms": verdicts[order[k]][1]} for k in slowest],
            "median_processing_ms": round(statistics.median(processing), 1),
            "median_waiting_ms": round(statistics.median(waiting), 1),
            "median_infer_ms": round(statistics.median(v[1].get("infer", 0.0) for v in verdicts.values()), 1),
            "load_avg_after": list(os.getloadavg())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each paced run")
    parser.add_argument("--peak-events", type=int, default=300)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--config", action="append", default=[],
                        help="name:VAR=value,... (replaces the built-in before/defaults pair)")
    parser.add_argument("--out", default="latency", help="result file name in bench/results/")
    args = parser.parse_args(argv)
    configs = CONFIGS
    if args.config:
        configs = {}
        for spec in args.config:
            name, _, pairs = spec.partition(":")
            configs[name] = dict(p.split("=", 1) for p in pairs.split(",") if p)
    bundle_path, bundle_name = bundle()
    results = {}
    with dev_stack() as stack, tempfile.TemporaryDirectory() as tmp:
        peaks = {name: run(stack, bundle_path, Path(tmp), env, args.peak_events, None)["memes_per_s"]
                 for name, env in configs.items()}
        # Every configuration is offered the same loads: fractions of the last one's peak (the defaults).
        reference = peaks[list(configs)[-1]]
        for name, env in configs.items():
            curve = [run(stack, bundle_path, Path(tmp), env, max(10, int(f * reference * args.seconds)),
                         f * reference) | {"fraction_of_peak": f} for f in args.fractions]
            results[name] = {"env": env, "peak_memes_per_s": peaks[name], "curve": curve}
    rows = [[name, r["peak_memes_per_s"], c["fraction_of_peak"], c["offered_per_s"], c["p50_ms"], c["p99_ms"],
             c["median_processing_ms"], c["median_waiting_ms"]] for name, r in results.items() for c in r["curve"]]
    table(f"post -> verdict latency ({bundle_name} bundle, CPU, all misses)",
          ["config", "peak/s", "load", "offered/s", "p50 ms", "p99 ms", "processing ms", "waiting ms"], rows)
    write_result(args.out, {
        "bundle": bundle_name, "bundle_path": str(bundle_path),
        "latency": "verdict timestamp (worker's producer) - event timestamp (bench producer), same clock",
        "processing": "the batch's timings_ms.total (prepare + inference + cache store)",
        "offered": "fractions of the peak of the last configuration (the defaults)",
        "configs": results, "targets_at_half_load_ms": {"p50": 150, "p99": 400}, "max_peak_loss": 0.10,
    })


if __name__ == "__main__":
    main()
