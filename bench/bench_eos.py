"""The cost of exactly-once: events/s of at_least_once (Faust agent) vs exactly_once (transactional loop) workers
on the same stream, side by side in one run, alternating rounds so load from other jobs hits both alike.

Each round: a fresh input topic with the same pre-produced backlog (N events over the shipped memes; past 750
the content repeats, so later events are cache hits as in production), Redis flushed, one worker started;
throughput is outputs per second from the worker being ready to its last output (broker timestamps).
Run: `python -m bench.bench_eos [--n 3000] [--rounds 2] [--batch 32]`.
"""

import argparse
import json
import statistics
import sys
import tempfile
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
from consumer.devinfra.stack import kafka_version
from testkit.audit import audit
from testkit.records import VERDICT, RecordSet
from testkit.topics import Topics

GUARANTEES = ("at_least_once", "exactly_once")


def one_round(stack, bundle_path: Path, guarantee: str, n: int, batch: int, workdir: Path) -> dict:
    flush_cache(stack)
    topics = Topics.unique()
    records = event_records(0, n, topics.group)
    produce(stack, topics.input, records)  # a backlog: the worker, not the producer, sets the pace
    worker = start_worker(stack, bundle_path, topics, workdir, MEMEGUARD_PROCESSING_GUARANTEE=guarantee,
                          MEMEGUARD_MAX_BATCH=str(batch), MEMEGUARD_PROVIDERS="cpu",
                          MEMEGUARD_INSTANCE_ID=topics.group, MEMEGUARD_LOG_LEVEL="info")
    ready_ms = now_ms()
    try:
        ids = {r[0] for r in records}
        reader = collect(stack, topics, ids)
        rate = throughput(reader, ids, ready_ms)
        events = {i: json.loads(v) for i, _, v in records}
        expected = RecordSet(records=[(k, v) for _, k, v in records], expected=dict.fromkeys(ids, VERDICT),
                             values={i: v for i, _, v in records},
                             content={i: (e["image_url"], e.get("text") or "") for i, e in events.items()})
        counts = audit(f"bench_{guarantee}", expected, reader.outputs)  # every event once after de-duplication
        reader.close()
    finally:
        worker.stop()
    result = {"guarantee": guarantee, "events_per_s": rate, "outputs": counts.outputs,
              "duplicates_before_dedup": counts.duplicates_before_dedup}
    if guarantee == "exactly_once":  # the worker's last line: transactions committed, ms spent in them
        txn = transaction_counts(worker.log_path)
        busy_s = (max(o.timestamp_ms for o in reader.outputs) - ready_ms) / 1000
        result |= {"transactions": txn.get("committed", 0), "aborted": txn.get("aborted", 0),
                   "events_per_transaction": round(n / max(txn.get("committed", 1), 1), 1),
                   "ms_per_transaction": round(txn.get("transaction_ms", 0) / max(txn.get("committed", 1), 1), 1),
                   "share_of_time_in_transactions": round(txn.get("transaction_ms", 0) / 1000 / busy_s, 3)}
    return result


def transaction_counts(log_path: Path) -> dict:
    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        if '"exactly-once worker stopped"' in line:
            return json.loads(line)
    return {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=3000, help="events per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per guarantee (alternating)")
    parser.add_argument("--batch", type=int, default=32, help="MEMEGUARD_MAX_BATCH")
    args = parser.parse_args(argv)
    bundle_path, bundle_name = bundle()
    runs: list[dict] = []
    with dev_stack() as stack, tempfile.TemporaryDirectory() as tmp:
        if stack.broker != "kafka":
            raise SystemExit("exactly-once needs Apache Kafka (MEMEGUARD_DEV_BROKER=kafka)")
        broker = f"Apache Kafka {kafka_version()} (single KRaft node, consumer/devinfra/stack.py)"
        for r in range(args.rounds):
            for guarantee in GUARANTEES if r % 2 == 0 else reversed(GUARANTEES):
                runs.append({"round": r + 1, **one_round(stack, bundle_path, guarantee, args.n, args.batch,
                                                         Path(tmp))})
    rates = {g: [x["events_per_s"] for x in runs if x["guarantee"] == g] for g in GUARANTEES}
    mean = {g: round(statistics.mean(v), 2) for g, v in rates.items()}
    ratio = round(mean["exactly_once"] / mean["at_least_once"], 3)
    table(f"exactly-once cost ({bundle_name} bundle, {args.n} events, batch {args.batch})",
          ["guarantee", *[f"round {i + 1} events/s" for i in range(args.rounds)], "mean events/s"],
          [[g, *rates[g], mean[g]] for g in GUARANTEES])
    print(f"exactly_once / at_least_once = {ratio} (cost {round((1 - ratio) * 100, 1)}%)")
    write_result("eos_throughput", {
        "command": " ".join(["python -m bench.bench_eos", *sys.argv[1:]]).strip(),  # the file is named for the issue
        "broker": broker, "bundle": bundle_name, "events_per_round": args.n, "max_batch": args.batch,
        "method": "same pre-produced backlog per round (memes repeat past 750: later events are cache hits), "
                  "Redis flushed, one worker, CPU provider; outputs/s from ready to the last output; "
                  "guarantees alternate round by round",
        "runs": runs, "mean_events_per_s": mean, "ratio_exactly_once_to_at_least_once": ratio,
        "cost_percent": round((1 - ratio) * 100, 1),
    })


if __name__ == "__main__":
    main()
