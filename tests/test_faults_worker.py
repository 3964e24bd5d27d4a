"""Fault injection on the worker process itself: SIGKILL mid-batch, rebalance, late broker (exactly-once:
tests/test_exactly_once.py).

Each scenario produces a known mixed set (unique memes, duplicate content under new ids, poison),
injects one fault, lets the system recover and audits the output topics (tests/faults/audit.py).
"""

import random
import re
import time
from pathlib import Path

import pytest
import redis

from consumer.devinfra.stack import broker_service, free_port
from consumer.kafka.topics import ensure_topics
from schemas import DeadLetter, ErrorKind, Verdict
from tests.faults.audit import OutputReader, audit, rate_per_s, report
from tests.faults.records import mixed
from tests.faults.workers import fault_worker
from tests.kafka_helpers import committed_offsets, produce_raw

pytestmark = [pytest.mark.faults, pytest.mark.integration]

N_EVENTS = 1000  # ~15-30 s of work for the tiny bundle on 2 shared cores; enough for three kills mid-stream
# At-least-once runs on the exactly-once worker's loop without transactions (the default) or on the Faust agent.
ENGINES = pytest.mark.parametrize("engine", ["faust", "confluent"])
SUFFIX = {"faust": "", "confluent": "_confluent"}  # scenario names in the faults report


def breaker_fields(redis_url: str, group: str) -> dict[bytes, set[bytes]]:
    """The crash-loop breaker's attempt fields per partition hash (consumer/worker/crash_guard.py)."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    return {key: set(client.hkeys(key)) for key in client.scan_iter(f"memeguard:attempts:{{{group}:*")}


def partition_of(key: bytes) -> int:
    """The input partition of a breaker hash key, `memeguard:attempts:{group:topic:partition}`."""
    return int(key.rsplit(b":", 1)[1].rstrip(b"}"))


def replay_pending(redis_url: str, bootstrap: str, group: str, topic: str, fields: dict[bytes, set[bytes]]) -> bool:
    """Whether a record in flight at the kill (one of `fields`) is still to be replayed: its field is still in
    Redis and its offset not yet committed. A field can outlive its record (killed between the commit and the
    breaker's clean-up): committed, it is never consumed again, so nothing is pending for it."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    left = {key: names & set(client.hkeys(key)) for key, names in fields.items()}
    if not any(left.values()):
        return False
    committed = committed_offsets(bootstrap, group, topic)
    for key, names in left.items():
        if any(int(name[1:]) >= max(committed.get(partition_of(key), 0), 0) for name in names):
            return True
    return False


@ENGINES
def test_sigkill_mid_batch_at_random_points_loses_nothing(stack, worker_factory, topics, tmp_path: Path, engine):
    rng = random.Random(8)
    records = mixed(N_EVENTS, "kill", seed=1)
    worker = fault_worker(worker_factory, tmp_path, MEMEGUARD_WORKER_ENGINE=engine).start()
    reader = OutputReader(stack.bootstrap, topics.output, topics.dlq)
    produce_raw(stack.bootstrap, topics.input, records.records)
    kills = []
    in_flight_at_kill: dict[bytes, set[bytes]] = {}
    alone_at_kill: set[tuple[int, int]] = set()  # (partition, offset) the breaker was replaying alone at a kill
    for low, high in ((0.1, 0.3), (0.35, 0.55), (0.6, 0.8)):
        # Kill at a random point of the stream's progress; batches take most of the time, so mostly mid-batch.
        target = max(int(N_EVENTS * rng.uniform(low, high)), len(reader.seen()) + 50)
        # Never while the crash-loop breaker replays the last kill's in-flight records one at a time: a kill
        # there would rightly make the record in hand a `poison_record`. The replay is over when each record
        # in flight at the kill has its attempt fields cleared (outputs acknowledged) or its offset committed.
        deadline = time.monotonic() + 180
        while len(reader.seen()) < target or replay_pending(stack.redis_url, stack.bootstrap, topics.group,
                                                            topics.input, in_flight_at_kill):
            assert reader.poll(0.2) or worker.proc.poll() is None, worker.log()
            assert time.monotonic() < deadline, "the replay after the last kill never finished"
        kills.append(len(reader.seen()))
        assert worker.stop(sig=9) == -9
        in_flight_at_kill = breaker_fields(stack.redis_url, topics.group)
        alone_at_kill |= {(partition_of(key), int(name[1:]))
                          for key, names in in_flight_at_kill.items() for name in names if name.startswith(b"i")}
        worker.start()
    reader.wait_for(records.ids, timeout_s=180, log=worker.log)
    # A record the breaker was replaying alone when a kill came is rightly a `poison_record` on its next try
    # (the wait above makes it rare, a kill racing the replay's start can still land there); any other is not.
    # Such a record may also have a verdict from before it was consumed again (at-least-once).
    excused = {o.event_id for o in reader.outputs
               if isinstance(o.out, DeadLetter) and o.out.error_kind == ErrorKind.POISON_RECORD
               and (o.out.origin.partition, o.out.origin.offset) in alone_at_kill}
    for event_id in excused:
        records.expected[event_id] = ErrorKind.POISON_RECORD.value
    audited = [o for o in reader.outputs if not (o.event_id in excused and isinstance(o.out, Verdict))]
    counts = audit("sigkill_restart" + SUFFIX[engine], records, audited)
    counts.extra = {"kills": 3, "outputs_seen_at_each_kill": kills, "starts": worker.starts, "engine": engine,
                    "poison_after_a_kill_alone": len(excused)}
    report(counts)
    reader.close()
    assert worker.stop() == 0, worker.log()


@ENGINES
def test_rebalance_kill_one_of_two_then_add_one(stack, worker_factory, topics, tmp_path: Path, engine):
    ensure_topics(stack.bootstrap, [topics.input], 4)  # four partitions: something to move between members
    records = mixed(N_EVENTS + 500, "rebalance", seed=2)  # room for work after the join
    env = {"MEMEGUARD_TOPIC_PARTITIONS": "4", "MEMEGUARD_WORKER_ENGINE": engine}
    a = fault_worker(worker_factory, tmp_path, **env).start()
    b = fault_worker(worker_factory, tmp_path, **env).start()
    reader = OutputReader(stack.bootstrap, topics.output, topics.dlq)
    produce_raw(stack.bootstrap, topics.input, records.records[:N_EVENTS])
    while len(reader.seen()) < N_EVENTS * 0.15:  # both members at work
        reader.poll(0.2)
    killed_ms = int(time.time() * 1000)
    seen_at_kill = len(reader.seen())
    assert a.stop(sig=9) == -9
    c = fault_worker(worker_factory, tmp_path, **env).start()
    joined_ms = int(time.time() * 1000)
    # The last 500 arrive only after the join, so work after it exists however fast the survivor was.
    produce_raw(stack.bootstrap, topics.input, records.records[N_EVENTS:])
    reader.wait_for(records.ids, timeout_s=180, log=lambda: b.log() + c.log())
    counts = audit("rebalance_kill_and_add" + SUFFIX[engine], records, reader.outputs)
    first_ms = min(o.timestamp_ms for o in reader.outputs)
    last_ms = max(o.timestamp_ms for o in reader.outputs)
    after = [o for o in reader.outputs if o.timestamp_ms >= joined_ms]
    counts.extra = {
        "outputs_seen_at_kill": seen_at_kill,
        "outputs_per_s_two_workers": rate_per_s(reader.outputs, first_ms, killed_ms),
        "outputs_per_s_during_rebalance": rate_per_s(reader.outputs, killed_ms, joined_ms),
        "outputs_per_s_after_join": rate_per_s(reader.outputs, joined_ms, last_ms + 1),
        "outputs_after_join": len(after),
        "engine": engine,
    }
    report(counts)
    reader.close()
    # Throughput recovers: the survivor and the newcomer kept producing outputs after the group re-formed.
    assert after, "no output after the new member joined"
    assert b.stop() == 0 and c.stop() == 0, b.log() + c.log()


def test_broker_unreachable_at_start_waits_with_backoff_then_serves(stack, worker_factory, topics, tmp_path: Path):
    broker = broker_service(stack.broker, free_port(), tmp_path / "late-broker")  # the session's kind
    bootstrap = f"127.0.0.1:{broker.port}"
    worker = fault_worker(worker_factory, tmp_path, MEMEGUARD_KAFKA_BOOTSTRAP=bootstrap,
                          MEMEGUARD_STARTUP_TIMEOUT_S="60").start(wait_ready=False)
    try:
        deadline = time.monotonic() + 40
        while full_log(worker).count("unreachable (attempt") < 3:  # a few backoff rounds with nobody listening
            assert worker.proc.poll() is None and time.monotonic() < deadline, worker.log()
            time.sleep(0.2)
        broker.start()
        worker.wait_ready(90)
        log = full_log(worker)
        pattern = rf"broker {re.escape(bootstrap)} unreachable \(attempt \d+\), retrying in ([\d.]+)s"
        delays = [float(d) for d in re.findall(pattern, log)]
        # 0.25 s doubling, plus up to 0.25 s of jitter (so restarted fleets do not knock in step)
        assert len(delays) >= 3 and delays[0] <= 0.5 and delays[2] > delays[0] + 0.4, (delays, log)
        assert f"broker {bootstrap} reachable after" in log, log
        records = mixed(300, "late-broker", seed=4)
        reader = OutputReader(bootstrap, topics.output, topics.dlq)
        produce_raw(bootstrap, topics.input, records.records)
        reader.wait_for(records.ids, timeout_s=180, log=worker.log)
        counts = audit("broker_unreachable_at_start", records, reader.outputs)
        waiting = log[: log.index("reachable after")]
        counts.extra = {"backoff_attempts_logged": log.count("unreachable (attempt"),
                        "client_noise_lines_while_waiting": waiting.count("rdkafka")}
        report(counts)
        reader.close()
        assert worker.stop() == 0, worker.log()
    finally:
        worker.stop(sig=9, timeout_s=5)
        broker.stop()


def test_broker_wait_is_not_drowned_by_client_reconnect_noise(worker_factory, topics, tmp_path: Path):
    """Bug: each wait attempt's admin client printed every refused reconnect (hundreds of lines in 30 s)."""
    worker = fault_worker(worker_factory, tmp_path, MEMEGUARD_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",
                          MEMEGUARD_STARTUP_TIMEOUT_S="8").start(wait_ready=False)
    assert worker.proc.wait(60) != 0
    log = full_log(worker)
    assert log.count("unreachable (attempt") >= 2, log
    assert "unreachable for 8s" in log, log  # one sentence saying what to do
    assert log.count("rdkafka") == 0, log


def full_log(worker) -> str:
    return worker.log_path.read_text(errors="replace")
