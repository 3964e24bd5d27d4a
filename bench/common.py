"""Shared pieces of the streaming benchmarks: machine facts, the bundle, a dev stack, worker runs, results.

A worker run is the real thing: `python -m consumer.cli worker` against the embedded broker (Apache Kafka;
MEMEGUARD_DEV_BROKER=tansu for Tansu) and redis-server on loopback, fed real memes (file:// references to the
shipped SemEval images).
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from confluent_kafka import Producer
from rich.console import Console
from rich.table import Table

from consumer.devinfra.stack import DevStack, free_port
from consumer.kafka.topics import ensure_topics
from testkit.audit import OutputReader
from testkit.records import memes, valid_event
from testkit.topics import Topics
from testkit.worker import WorkerProcess

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DEFAULT_BUNDLE = REPO / ".cache" / "bundles" / "default"
console = Console()


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), "unknown")
    ram_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")))
    return {"cpu": model, "cores": os.cpu_count(), "ram_gib": round(ram_kb / 2**20, 1),
            "python": platform.python_version(), "load_avg_at_start": list(os.getloadavg()),
            "note": "cores shared with other engineers' jobs during the run; absolute figures are noisy, "
                    "ratios are measured side by side in one run"}


def bundle() -> tuple[Path, str]:
    """The trained default bundle when it has been built, else a tiny random one (said so in the results)."""
    if (DEFAULT_BUNDLE / "manifest.json").exists():
        return DEFAULT_BUNDLE, "default"
    from exporters.testing import write_tiny_bundle

    return write_tiny_bundle(Path(tempfile.mkdtemp()) / "tiny", seed=0), "tiny (default bundle not built)"


@dataclass(frozen=True)
class RunningStack:
    """A broker and a redis-server someone else started and stops (what a bench reads of a DevStack)."""

    bootstrap: str
    redis_url: str
    broker: str


@contextmanager
def dev_stack() -> Iterator[DevStack | RunningStack]:
    """An embedded broker and redis-server of the bench's own on free loopback ports, stopped afterwards; or
    the pair MEMEGUARD_BENCH_BOOTSTRAP and MEMEGUARD_BENCH_REDIS_URL name, left running (the test suite's
    session stack, for the GPU script's dry run: no second broker start)."""
    bootstrap, redis_url = os.environ.get("MEMEGUARD_BENCH_BOOTSTRAP"), os.environ.get("MEMEGUARD_BENCH_REDIS_URL")
    if bootstrap and redis_url:
        yield RunningStack(bootstrap, redis_url, os.environ.get("MEMEGUARD_DEV_BROKER", "kafka"))
        return
    stack = DevStack.at(Path(tempfile.mkdtemp(prefix="mg-bench-")), free_port(), free_port())
    stack.up()
    try:
        yield stack
    finally:
        stack.down()


def flush_cache(stack: DevStack) -> None:
    """Each configuration starts cold: no verdict from an earlier run may be served from Redis."""
    redis.Redis.from_url(stack.redis_url).flushall()


def start_worker(stack: DevStack, bundle_path: Path, topics: Topics, workdir: Path, argv: list[str] | None = None,
                 **env: str) -> WorkerProcess:
    """`argv`: after the interpreter, e.g. `["-m", "consumer.cli", "worker", "--processes", "2"]`."""
    workdir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:6]
    full = {**os.environ, "HF_HUB_OFFLINE": "1",
            "MEMEGUARD_KAFKA_BOOTSTRAP": stack.bootstrap, "MEMEGUARD_REDIS_URL": stack.redis_url,
            "MEMEGUARD_BUNDLE_PATH": str(bundle_path), "MEMEGUARD_INPUT_TOPIC": topics.input,
            "MEMEGUARD_OUTPUT_TOPIC": topics.output, "MEMEGUARD_DLQ_TOPIC": topics.dlq,
            "MEMEGUARD_GROUP_ID": topics.group, "MEMEGUARD_TOPIC_PARTITIONS": "2",
            "MEMEGUARD_FILE_ROOT": str(REPO.parent / "shared" / "data"), "MEMEGUARD_WATCH_BUNDLE": "false",
            "MEMEGUARD_READY_FILE": str(workdir / f"{tag}.ready"), "MEMEGUARD_LOG_LEVEL": "warning",
            "F_DATADIR": str(workdir / f"faust-{tag}"), **env}
    worker = WorkerProcess(env=full, log_path=workdir / f"{tag}.log", ready_file=workdir / f"{tag}.ready")
    if argv is not None:
        worker.argv = argv
    return worker.start(timeout_s=180)


def event_records(first: int, n: int, run: str, unique: int | None = None) -> list[tuple[str, bytes, bytes]]:
    """(event id, key, value) for n events over memes[first:], repeating the first `unique` when given."""
    pool = memes()
    out = []
    for i in range(n):
        source = pool[(first + (i % unique if unique else i)) % len(pool)]
        event = valid_event(f"{run}-{i}", source)
        out.append((event.event_id, event.post_id.encode(), event.model_dump_json().encode()))
    return out


def produce(stack: DevStack, topic: str, records: list[tuple[str, bytes, bytes]],
            rate_per_s: float | None = None) -> dict[str, int]:
    """Produce (paced when `rate_per_s`); returns each event id's produce time in ms (the latency origin)."""
    ensure_topics(stack.bootstrap, [topic], 2)
    producer = Producer({"bootstrap.servers": stack.bootstrap, "acks": "all", "linger.ms": 2})
    sent: dict[str, int] = {}
    start = time.monotonic()
    for n, (event_id, key, value) in enumerate(records):
        if rate_per_s:
            delay = start + n / rate_per_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        sent[event_id] = int(time.time() * 1000)
        producer.produce(topic, key=key, value=value, timestamp=sent[event_id])
        producer.poll(0)
    producer.flush(60)
    return sent


def collect(stack: DevStack, topics: Topics, ids: set[str], timeout_s: float = 600) -> OutputReader:
    reader = OutputReader(stack.bootstrap, topics.output, topics.dlq)
    reader.wait_for(ids, timeout_s=timeout_s, settle_s=0.5)
    return reader


def throughput(reader: OutputReader, ids: set[str], since_ms: int) -> float:
    """Outputs of `ids` per second from `since_ms` (the worker became ready) to the last one (broker time)."""
    stamps = [o.timestamp_ms for o in reader.outputs if o.event_id in ids]
    return round(len(stamps) / max((max(stamps) - since_ms) / 1000, 1e-3), 2)


def now_ms() -> int:
    return int(time.time() * 1000)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))], 1)


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    command = f"{Path(sys.executable).name} -m bench.{Path(sys.argv[0]).stem} " + " ".join(sys.argv[1:])
    path.write_text(json.dumps({"command": command.strip(), "machine": machine(), **payload}, indent=2) + "\n")
    console.print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return path


def table(title: str, columns: list[str], rows: list[list]) -> None:
    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    console.print(t)


@dataclass
class Phase:
    ids: set[str]
    sent_ms: dict[str, int]
