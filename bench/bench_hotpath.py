"""The worker's per-event cost, side by side in one run on one embedded broker (issue 16, part 4):

(a) bare: a confluent-kafka consume -> produce loop in this process (parse JSON, emit ~3 KB, wait for the
    acknowledgements and commit per batch): what any Kafka consumer in Python costs, the ceiling;
(b) hits: the real worker (`python -m consumer.cli worker`), every event a cache hit (the cache is warmed
    first by a separate run over the same memes);
(c) misses: the real worker, every event a miss (unique text per event) on the tests' tiny bundle, real
    meme JPEGs via file://, so decode, hashing and the worker's own costs show, not the model's; then the same
    with MEMEGUARD_JPEG_SCAN_SUBSET=false (every progressive JPEG decoded from its whole file);
(d) with `--variant KEY=VALUE[,KEY=VALUE]` (repeatable): the hits and misses cases again with those worker
    settings on top (e.g. MEMEGUARD_WORKER_ENGINE=confluent), side by side;
(e) with `--hit-processes N`: the all-hits case again with `worker --processes N` (CPU summed over the
    supervisor and its N children) beside N bare loops (threads of this process, a partition each): how the
    hit path scales with processes on the same cores.

Throughput is outputs over broker time (first to last output's timestamp), so worker start-up and group
joins are not counted; CPU per event is the worker process's user + system time over the same window.
Run: `python -m bench.bench_hotpath [--hits 6000 --misses 2000 --batch 64 --hit-processes 2]` (about 2 minutes).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from bench.common import dev_stack, flush_cache, produce, start_worker, table, write_result
from consumer.kafka.topics import ensure_topics
from testkit.records import memes, valid_event
from testkit.topics import Topics

VERDICT_LIKE_BYTES = 3 * 1024  # what a verdict with 20 technique scores and timings weighs


def jpeg_memes() -> list:
    """The shipped memes that are JPEG by content (731 of 750; their file names say .png)."""
    return [m for m in memes() if m.image_path.read_bytes()[:3] == b"\xff\xd8\xff"]


def records(run: str, n: int, unique: int | None, unique_text: bool) -> list[tuple[str, bytes, bytes]]:
    pool = jpeg_memes()
    out = []
    for i in range(n):
        source = pool[(i % unique if unique else i) % len(pool)]
        event = valid_event(f"{run}-{i}", source)
        if unique_text:  # a new content hash per event: every one is a cache miss
            event = event.model_copy(update={"text": f"{source.text or ''} #{run}-{i}"})
        out.append((event.event_id, event.post_id.encode(), event.model_dump_json().encode()))
    return out


def cpu_s(pid: int) -> tuple[float, set[int]]:
    """utime + stime of `pid` and of its live child processes (`worker --processes N` runs N children), and
    which processes were counted (a child that exits takes its CPU time with it)."""
    total, counted = 0, set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):  # fields[1]: the parent's pid
            total += int(fields[11]) + int(fields[12])
            counted.add(int(stat.parent.name))
    return total / os.sysconf("SC_CLK_TCK"), counted


def committed_all(bootstrap: str, group: str, topic: str, partitions: int, total: int) -> bool:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return sum(max(tp.offset, 0) for tp in offsets) >= total
    finally:
        consumer.close()


def wait_committed(bootstrap: str, group: str, topic: str, total: int, timeout_s: float, poll_s: float = 0.5) -> None:
    """Cheap on the CPU the worker needs: one OffsetFetch per `poll_s`, no output is parsed meanwhile."""
    deadline = time.monotonic() + timeout_s
    while not committed_all(bootstrap, group, topic, 2, total):
        if time.monotonic() > deadline:
            raise AssertionError(f"{group}: not all {total} offsets committed after {timeout_s}s")
        time.sleep(poll_s)


def output_stamps(bootstrap: str, topics: list[str], expect: int, timeout_s: float = 60) -> tuple[list[int], set]:
    """Broker timestamps and event ids of every output (read after the run, so it costs the run nothing), until
    `expect` distinct ids are in: an at-least-once run may publish some twice (a batch replayed after a rebalance)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "hotpath-reader", "enable.auto.commit": False})
    metadata = consumer.list_topics(timeout=10)
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in topics if t in metadata.topics
                     for p in metadata.topics[t].partitions])
    stamps, ids = [], set()
    deadline = time.monotonic() + timeout_s
    try:
        while len(ids) < expect and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error():
                    continue
                stamps.append(msg.timestamp()[1])
                ids.add(json.loads(msg.value()).get("event_id"))
    finally:
        consumer.close()
    return stamps, ids


def rate(stamps: list[int]) -> float:
    span = (max(stamps) - min(stamps)) / 1000
    return round((len(stamps) - 1) / max(span, 1e-3), 1)


def bare_loop(bootstrap: str, topics: Topics, n: int, batch: int, members: int = 1) -> dict:
    """What a minimal Python consumer does per event: parse, emit ~3 KB, wait for acks, commit per batch.
    With `members` > 1: that many such loops on threads of this process, one partition each (assigned, so no
    group rebalance), until the n events are done between them (librdkafka does the waiting off the GIL)."""
    padding = "x" * VERDICT_LIKE_BYTES
    failures: list = []
    done = [0]
    lock = threading.Lock()

    def loop(partition: int | None) -> None:
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topics.group, "enable.auto.commit": False,
                             "auto.offset.reset": "earliest"})
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
        if partition is None:
            consumer.subscribe([topics.input])
        else:
            consumer.assign([TopicPartition(topics.input, partition, OFFSET_BEGINNING)])
        try:
            while done[0] < n:
                messages = [m for m in consumer.consume(batch, 0.5) if not m.error()]
                for m in messages:
                    event = json.loads(m.value())
                    out = json.dumps({"event_id": event["event_id"], "post_id": event["post_id"], "pad": padding})
                    producer.produce(topics.output, key=m.key(), value=out.encode(),
                                     on_delivery=lambda err, _msg: err and failures.append(err))
                producer.flush(30)  # every output acknowledged before the batch's offsets commit
                if messages:
                    consumer.commit(asynchronous=False)
                with lock:
                    done[0] += len(messages)
        finally:
            consumer.close()

    cpu0 = time.process_time()
    if members == 1:
        loop(None)
    else:
        threads = [threading.Thread(target=loop, args=(p,)) for p in range(members)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    return {"cpu_s": time.process_time() - cpu0}


def measure(label: str, stack, topics: Topics, recs: list, timeout_s: float, run, backlog_first: bool = True) -> dict:
    """`backlog_first`: the records are produced before the worker starts, so the consumer, not the producer, sets
    the pace. Otherwise once it is ready (`run(feed)`): with N processes, the first member ready would otherwise
    take much of the backlog while the others start, outside the CPU measured."""
    ensure_topics(stack.bootstrap, [topics.input, topics.output, topics.dlq], 2)
    if backlog_first:
        produce(stack, topics.input, recs)
        cpu = run()
    else:
        cpu = run(lambda: produce(stack, topics.input, recs))
    stamps, ids = output_stamps(stack.bootstrap, [topics.output, topics.dlq], len(recs))
    missing = {r[0] for r in recs} - ids
    assert not missing, f"{label}: {len(missing)} events without an output, e.g. {sorted(missing)[:3]}"
    events_per_s = rate(stamps)
    return {"events": len(recs), "events_per_s": events_per_s,
            "core_ms_per_event": round(cpu * 1000 / len(recs), 3),
            "load_avg_after": list(os.getloadavg())}


def worker_run(stack, bundle_path: Path, topics: Topics, n: int, workdir: Path, env: dict[str, str],
               profile: Path | None = None, processes: int = 1):
    argv = ["-m", "consumer.cli", "worker", "--processes", str(processes)] if processes > 1 else None

    def run(feed=None) -> float:
        worker = start_worker(stack, bundle_path, topics, workdir, argv, **env)
        spy = None
        if profile is not None:  # py-spy's collapsed stacks (`--format raw`), one line per stack with its count
            py_spy = str(Path(sys.executable).parent / "py-spy")  # the venv's, whether or not it is on PATH
            spy = subprocess.Popen([py_spy, "record", "--nonblocking", "--format", "raw", "--rate", "200",
                                    "-o", str(profile), "-p", str(worker.proc.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            before, counted = cpu_s(worker.proc.pid)
            if feed is not None:
                feed()
            wait_committed(stack.bootstrap, topics.group, topics.input, n, timeout_s=900)
            after, still = cpu_s(worker.proc.pid)
            assert still == counted and len(counted) == processes + (processes > 1), (
                f"worker processes changed during the run ({sorted(counted)} -> {sorted(still)}): CPU not comparable")
            return after - before
        finally:
            worker.stop()
            if spy is not None:
                spy.wait(30)
    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hits", type=int, default=6000, help="events for the bare loop and the all-hits run")
    parser.add_argument("--misses", type=int, default=2000, help="events for the all-misses run")
    parser.add_argument("--unique", type=int, default=200, help="distinct memes behind the all-hits run")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--label", default="", help="e.g. 'before' / 'after': stored with the figures")
    parser.add_argument("--out", default="hotpath", help="result file name in bench/results/")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra worker environment, e.g. MEMEGUARD_PROCESSING_GUARANTEE=exactly_once (stored)")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                        help="also run the hits and misses cases with this worker environment on top, e.g. "
                             "MEMEGUARD_WORKER_ENGINE=confluent (side by side in the same run)")
    parser.add_argument("--hit-processes", type=int, default=0,
                        help="also run the all-hits case with `worker --processes N` (N >= 2; CPU summed over them)")
    parser.add_argument("--profile", type=Path, help="directory for py-spy profiles of the hits and misses runs")
    args = parser.parse_args(argv)
    from exporters.testing import write_tiny_bundle

    env = {"MEMEGUARD_MAX_BATCH": str(args.batch), "MEMEGUARD_PROVIDERS": "cpu",
           **dict(kv.split("=", 1) for kv in args.env)}
    with dev_stack() as stack, tempfile.TemporaryDirectory() as tmp:
        bundle_path = write_tiny_bundle(Path(tmp) / "tiny", seed=0)
        flush_cache(stack)
        t = Topics.unique()
        bare = measure("bare", stack, t, records(t.group, args.hits, args.unique, False), 300,
                       lambda: bare_loop(stack.bootstrap, t, args.hits, args.batch)["cpu_s"])
        warm = Topics.unique()  # the cache learns the `unique` memes, outside any measurement
        measure("warm-up", stack, warm, records(warm.group, args.unique, None, False), 300,
                worker_run(stack, bundle_path, warm, args.unique, Path(tmp), env))
        t = Topics.unique()
        hits = measure("hits", stack, t, records(t.group, args.hits, args.unique, False), 600,
                       worker_run(stack, bundle_path, t, args.hits, Path(tmp), env,
                                  args.profile / "hits.txt" if args.profile else None))
        variants = []
        for spec in args.variant:
            variant = dict(kv.split("=", 1) for kv in spec.split(","))
            t = Topics.unique()
            hits_v = measure(f"hits, {spec}", stack, t, records(t.group, args.hits, args.unique, False), 600,
                             worker_run(stack, bundle_path, t, args.hits, Path(tmp), {**env, **variant}))
            t = Topics.unique()
            misses_v = measure(f"misses, {spec}", stack, t, records(t.group, args.misses, None, True), 900,
                               worker_run(stack, bundle_path, t, args.misses, Path(tmp), {**env, **variant}))
            variants.append({"env": variant, "hits": hits_v, "misses": misses_v,
                             "hits_over_bare": round(hits_v["events_per_s"] / bare["events_per_s"], 3)})
        hits_processes = bare_members = None
        if args.hit_processes > 1:
            t = Topics.unique()
            bare_members = measure(f"bare, {args.hit_processes} loops", stack, t,
                                   records(t.group, args.hits, args.unique, False), 300,
                                   lambda: bare_loop(stack.bootstrap, t, args.hits, args.batch,
                                                     args.hit_processes)["cpu_s"])
            t = Topics.unique()
            hits_processes = measure(f"hits, {args.hit_processes} processes", stack, t,
                                     records(t.group, args.hits, args.unique, False), 600,
                                     worker_run(stack, bundle_path, t, args.hits, Path(tmp), env,
                                                processes=args.hit_processes), backlog_first=False)
        t = Topics.unique()
        misses = measure("misses", stack, t, records(t.group, args.misses, None, True), 900,
                         worker_run(stack, bundle_path, t, args.misses, Path(tmp), env,
                                    args.profile / "misses.txt" if args.profile else None))
        t = Topics.unique()  # the same, decoding every progressive JPEG's whole file (no scan subset)
        misses_whole = measure("misses, whole file", stack, t, records(t.group, args.misses, None, True), 900,
                               worker_run(stack, bundle_path, t, args.misses, Path(tmp),
                                          {**env, "MEMEGUARD_JPEG_SCAN_SUBSET": "false"}))
    ratio = round(hits["events_per_s"] / bare["events_per_s"], 3)
    variant_rows = [[f"  {case}, {spec}", v[case]["events"], v[case]["events_per_s"], v[case]["core_ms_per_event"],
                     round(v[case]["events_per_s"] / bare["events_per_s"], 3)]
                    for spec, v in zip(args.variant, variants, strict=True) for case in ("hits", "misses")]
    extra = variant_rows + ([] if hits_processes is None else [
        [f"bare, {args.hit_processes} loops (threads, a partition each)", bare_members["events"],
         bare_members["events_per_s"], bare_members["core_ms_per_event"],
         round(bare_members["events_per_s"] / bare["events_per_s"], 3)],
        [f"worker --processes {args.hit_processes}, all hits", hits_processes["events"],
         hits_processes["events_per_s"], hits_processes["core_ms_per_event"],
         round(hits_processes["events_per_s"] / bare["events_per_s"], 3)]])
    table(f"per-event cost (tiny bundle, batch {args.batch}, 2 partitions) {args.label}",
          ["path", "events", "events/s", "core-ms/event", "vs bare"],
          [["bare consume->produce", bare["events"], bare["events_per_s"], bare["core_ms_per_event"], 1.0],
           ["worker, all hits", hits["events"], hits["events_per_s"], hits["core_ms_per_event"], ratio], *extra,
           ["worker, all misses", misses["events"], misses["events_per_s"], misses["core_ms_per_event"],
            round(misses["events_per_s"] / bare["events_per_s"], 3)],
           ["  same, whole-file JPEG decode", misses_whole["events"], misses_whole["events_per_s"],
            misses_whole["core_ms_per_event"], round(misses_whole["events_per_s"] / bare["events_per_s"], 3)]])
    print(f"hits / bare = {ratio} (target >= 0.5); misses = {misses['events_per_s']} events/s (target >= 400); "
          f"whole-file decode: {misses_whole['events_per_s']} events/s")
    if hits_processes is not None:
        print(f"{args.hit_processes} worker processes / {args.hit_processes} bare loops, all hits = "
              f"{hits_processes['events_per_s'] / bare_members['events_per_s']:.3f}")
    write_result(args.out, {
        "label": args.label, "worker_env": env, "bundle": "tiny (exporters.testing.write_tiny_bundle, seed 0)",
        "batch": args.batch,
        "partitions": 2, "images": "shipped SemEval memes that are JPEG by content, file://",
        "bare": bare, "hits": hits, "misses": misses, "misses_whole_file_jpeg_decode": misses_whole,
        **({"variants": variants} if variants else {}),
        **({f"bare_{args.hit_processes}_loops": bare_members, f"hits_{args.hit_processes}_processes": hits_processes,
            f"hits_{args.hit_processes}_processes_over_bare_{args.hit_processes}_loops":
                round(hits_processes["events_per_s"] / bare_members["events_per_s"], 3)} if hits_processes else {}),
        "hits_over_bare": ratio,
        "misses_scan_subset_over_whole_file": round(misses["events_per_s"] / misses_whole["events_per_s"], 3),
        "targets": {"hits_over_bare": 0.5, "misses_events_per_s": 400},
    })


if __name__ == "__main__":
    main()
