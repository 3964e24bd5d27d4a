"""Exactly-once mode (consumer/worker/loop.py) on Apache Kafka: real worker processes, real faults, and an
audit that reads the outputs with `isolation.level=read_committed` (librdkafka's default, tests/faults/audit.py):
the outputs of aborted transactions must stay invisible, so every event shows up exactly once *before* any
de-duplication, and the input offsets end committed through the transactions.
"""

import asyncio
import json
import random
import signal
import time
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, IsolationLevel, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from consumer.core.pipeline import Outcome, RawRecord, dead_letter
from consumer.core.publish import TRUNCATED_ORIGINAL_BYTES, OutcomePublisher, ProducerTopic
from consumer.devinfra.stack import KafkaCluster
from consumer.kafka.topics import ensure_topics
from schemas import ErrorKind
from tests.faults.audit import OutputReader, audit, rate_per_s, report
from tests.faults.records import mixed
from tests.faults.transactions import broker_hides_aborted_records
from tests.faults.workers import fault_worker
from tests.kafka_helpers import committed_offsets, produce_raw

EOS = {"MEMEGUARD_PROCESSING_GUARANTEE": "exactly_once"}
N_EVENTS = 1000


@pytest.fixture(scope="module")
def hides_aborted(stack) -> bool:
    """Tansu returns records of aborted transactions to read_committed readers: exactly-once cannot hold there."""
    if not broker_hides_aborted_records(stack.bootstrap):
        pytest.xfail(f"the {stack.broker} broker shows records of aborted transactions to read_committed "
                     "consumers (tests/faults/transactions.py); exactly-once needs Apache Kafka")
    return True


class UncommittedCounter:
    """Counts every output record, committed or not (isolation.level=read_uncommitted): the outputs of
    aborted transactions are the difference to what the read_committed audit sees."""

    def __init__(self, bootstrap: str, topics: list[str], partitions: int) -> None:
        self.count = 0
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "eos-uncommitted",
                                   "isolation.level": "read_uncommitted", "enable.auto.commit": False})
        ensure_topics(bootstrap, topics, partitions)
        self._consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(partitions)])

    def poll(self) -> int:
        while messages := self._consumer.consume(500, 0.01):
            self.count += sum(m.error() is None for m in messages)
        return self.count

    def close(self) -> None:
        self._consumer.close()


class OpenTransactionProbe:
    """An output partition whose last stable offset (read_committed end) lags its high watermark holds records
    of a transaction that is still open."""

    def __init__(self, bootstrap: str, topics: list[str], partitions: int) -> None:
        self._admin = AdminClient({"bootstrap.servers": bootstrap})
        self._tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]

    def _ends(self, level: IsolationLevel) -> dict[tuple[str, int], int]:
        futures = self._admin.list_offsets({tp: OffsetSpec.latest() for tp in self._tps}, isolation_level=level)
        return {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}

    def open(self) -> bool:
        stable, high = self._ends(IsolationLevel.READ_COMMITTED), self._ends(IsolationLevel.READ_UNCOMMITTED)
        return any(stable[tp] < high[tp] for tp in high)


def freeze_mid_transaction(worker, probe: OpenTransactionProbe, attempts: int = 10) -> bool:
    """SIGSTOP the worker while a transaction of its is open (outputs written, not committed); True once it is
    frozen that way. A freeze that came too late (the commit already on its way: the broker finishes it without
    the worker) is undone and retried."""
    for _ in range(attempts):
        deadline = time.monotonic() + 5
        while not probe.open() and time.monotonic() < deadline:
            pass
        worker.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.5)
        if probe.open():
            return True
        worker.proc.send_signal(signal.SIGCONT)
    return False


def eos_worker(worker_factory, tmp_path: Path, instance: str, **env: str):
    """A stable MEMEGUARD_INSTANCE_ID per worker: its transactional.id survives its restarts."""
    return fault_worker(worker_factory, tmp_path, **EOS, MEMEGUARD_INSTANCE_ID=instance, **env)


def wait_committed(bootstrap: str, group: str, topic: str, last: dict[int, int], partitions: int) -> None:
    """Input offsets are committed through the transactions: all of them, once the work is done."""
    expected = {p: last[p] + 1 for p in range(partitions) if p in last}
    deadline = time.monotonic() + 30
    while (got := {p: o for p, o in committed_offsets(bootstrap, group, topic, partitions).items()
                   if p in expected}) != expected:
        assert time.monotonic() < deadline, (got, expected)
        time.sleep(0.5)


@pytest.mark.faults
@pytest.mark.integration
def test_exactly_once_sigkill_three_times_at_random_points(stack, hides_aborted, worker_factory, topics,
                                                           tmp_path: Path):
    rng = random.Random(11)
    records = mixed(N_EVENTS, "eos-kill", seed=5)
    worker = eos_worker(worker_factory, tmp_path, "a").start()
    reader = OutputReader(stack.bootstrap, topics.output, topics.dlq)
    everything = UncommittedCounter(stack.bootstrap, [topics.output, topics.dlq], 2)
    probe = OpenTransactionProbe(stack.bootstrap, [topics.output, topics.dlq], 2)
    last = produce_raw(stack.bootstrap, topics.input, records.records)
    kills = []
    for n, (low, high) in enumerate(((0.1, 0.3), (0.3, 0.45), (0.6, 0.8))):
        # Past the batch in flight at the previous kill, which the crash-loop breaker replays one record at a
        # time: killing the worker twice on the same record would rightly make it a `poison_record`.
        target = max(int(N_EVENTS * rng.uniform(low, high)), len(reader.seen()) + 80)
        deadline = time.monotonic() + 60
        while len(reader.seen()) < target:
            assert reader.poll(0.05) or worker.proc.poll() is None, worker.log()
            assert time.monotonic() < deadline, f"no progress to {target} outputs:\n{worker.log()}"
        if n == 1:  # once with a transaction open: its outputs are written but not yet committed
            mid_transaction = freeze_mid_transaction(worker, probe)
        else:  # anywhere in a batch: processing, producing, committing
            time.sleep(rng.uniform(0, 0.3))
        kills.append(len(reader.seen()))
        assert worker.stop(sig=9) == -9  # its open transaction is aborted by the restart's init_transactions
        while reader.poll(0.5):  # everything committed before the kill
            pass
        worker.start()
    reader.wait_for(records.ids, timeout_s=120, log=worker.log)
    counts = audit("exactly_once_sigkill_x3", records, reader.outputs, allow_duplicates=False)
    time.sleep(1.0)
    aborted = everything.poll() - len(reader.outputs)  # written, then aborted: never read by the audit
    everything.close()
    counts.extra = {"guarantee": "exactly_once", "lost": 0, "kills": 3, "outputs_seen_at_each_kill": kills,
                    "starts": worker.starts, "killed_with_a_transaction_open": mid_transaction,
                    "aborted_outputs_hidden": aborted}
    report(counts)
    reader.close()
    # The transaction open at the second kill was aborted: its outputs were written, and the audit never saw them.
    assert mid_transaction and aborted > 0, counts.extra
    wait_committed(stack.bootstrap, topics.group, topics.input, last, 2)
    assert worker.stop() == 0, worker.log()


@pytest.mark.faults
@pytest.mark.integration
def test_exactly_once_rebalance_kill_one_of_two_then_add_one(stack, hides_aborted, worker_factory, topics,
                                                            tmp_path: Path):
    ensure_topics(stack.bootstrap, [topics.input], 4)
    records = mixed(N_EVENTS + 200, "eos-rebalance", seed=6)
    env = {"MEMEGUARD_TOPIC_PARTITIONS": "4"}
    a = eos_worker(worker_factory, tmp_path, "a", **env).start()
    b = eos_worker(worker_factory, tmp_path, "b", **env).start()
    reader = OutputReader(stack.bootstrap, topics.output, topics.dlq)
    first = produce_raw(stack.bootstrap, topics.input, records.records[:N_EVENTS])
    while len(reader.seen()) < N_EVENTS * 0.2:  # both members at work
        reader.poll(0.1)
    killed_ms = int(time.time() * 1000)
    seen_at_kill = len(reader.seen())
    assert a.stop(sig=9) == -9  # not restarted: its open transaction ends by the coordinator's timeout
    c = eos_worker(worker_factory, tmp_path, "c", **env).start()  # a new instance, a new transactional.id
    joined_ms = int(time.time() * 1000)
    # The last 200 arrive only after the join, so work after it exists however fast the survivor was (one CI
    # run failed "no output after the new member joined" with all 1,200 outputs in and none lost).
    later = produce_raw(stack.bootstrap, topics.input, records.records[N_EVENTS:])
    last = {p: max(first.get(p, -1), later.get(p, -1)) for p in first.keys() | later.keys()}
    reader.wait_for(records.ids, timeout_s=120, log=lambda: b.log() + c.log())
    counts = audit("exactly_once_rebalance_kill_and_add", records, reader.outputs, allow_duplicates=False)
    last_ms = max(o.timestamp_ms for o in reader.outputs)
    after = [o for o in reader.outputs if o.timestamp_ms >= joined_ms]
    counts.extra = {"guarantee": "exactly_once", "lost": 0, "outputs_seen_at_kill": seen_at_kill,
                    "outputs_per_s_during_rebalance": rate_per_s(reader.outputs, killed_ms, joined_ms),
                    "outputs_per_s_after_join": rate_per_s(reader.outputs, joined_ms, last_ms + 1),
                    "outputs_after_join": len(after)}
    report(counts)
    reader.close()
    assert after, "no output after the new member joined"
    wait_committed(stack.bootstrap, topics.group, topics.input, last, 4)
    assert b.stop() == 0 and c.stop() == 0, b.log() + c.log()


@pytest.mark.faults
@pytest.mark.integration
def test_exactly_once_zombie_is_fenced_by_the_group(stack, hides_aborted, worker_factory, topics, tmp_path: Path):
    """KIP-447: a worker frozen past the session timeout loses its partitions; when it wakes up its batch's
    commit is refused for its stale generation (the other worker has taken over), so it aborts, and no output
    is doubled although the two workers' transactional ids differ."""
    records = mixed(N_EVENTS, "eos-zombie", seed=8)
    a = eos_worker(worker_factory, tmp_path, "a").start()
    b = eos_worker(worker_factory, tmp_path, "b").start()
    reader = OutputReader(stack.bootstrap, topics.output, topics.dlq)
    last = produce_raw(stack.bootstrap, topics.input, records.records)
    while len(reader.seen()) < N_EVENTS * 0.2:
        reader.poll(0.1)
    seen_at_freeze = len(reader.seen())
    a.proc.send_signal(signal.SIGSTOP)  # mid-batch, most likely: batches take most of the time
    deadline = time.monotonic() + 10  # > the 6 s session timeout: b takes a's partitions over
    while time.monotonic() < deadline:
        reader.poll(0.2)
    a.proc.send_signal(signal.SIGCONT)
    reader.wait_for(records.ids, timeout_s=120, log=lambda: a.log() + b.log())
    counts = audit("exactly_once_zombie_fenced", records, reader.outputs, allow_duplicates=False)
    log_a = a.log_path.read_text(errors="replace")
    counts.extra = {"guarantee": "exactly_once", "lost": 0, "outputs_seen_at_freeze": seen_at_freeze,
                    "zombie_transactions_aborted": log_a.count("transaction aborted"),
                    "zombie_exit_code": a.proc.poll()}
    report(counts)
    reader.close()
    wait_committed(stack.bootstrap, topics.group, topics.input, last, 2)
    assert b.stop() == 0, b.log()


@pytest.fixture(scope="module")
def cluster(stack, tmp_path_factory: pytest.TempPathFactory):
    """Three KRaft brokers, replication factor 3, min.insync.replicas=2 (consumer/devinfra/stack.py)."""
    if stack.broker != "kafka":
        pytest.skip("the three-broker cluster is Apache Kafka")
    state = tmp_path_factory.mktemp("cluster")
    c = KafkaCluster.at(state)
    c.up()
    yield c
    c.down()


@pytest.mark.faults
@pytest.mark.integration
def test_exactly_once_partition_leader_killed_mid_stream(cluster, hides_aborted, worker_factory, topics,
                                                         tmp_path: Path):
    records = mixed(N_EVENTS, "eos-leader", seed=7)
    env = {"MEMEGUARD_KAFKA_BOOTSTRAP": cluster.bootstrap, "MEMEGUARD_TOPIC_REPLICATION_FACTOR": "3",
           "MEMEGUARD_RESTART_BACKOFF_S": "1"}
    worker = eos_worker(worker_factory, tmp_path, "a", **env).start()
    reader = OutputReader(cluster.bootstrap, topics.output, topics.dlq)
    last = produce_raw(cluster.bootstrap, topics.input, records.records)
    while len(reader.seen()) < N_EVENTS * 0.3:
        assert reader.poll(0.1) or worker.proc.poll() is None, worker.log()
    victim = cluster.leader(topics.input, 0)
    led = {f"{t}/{p}" for t in (topics.input, topics.output, topics.dlq) for p in range(2)
           if cluster.leader(t, p) == victim}
    seen_at_kill = len(reader.seen())
    killed_ms = int(time.time() * 1000)
    cluster.kill(victim)
    try:
        deadline = time.monotonic() + 120
        while not records.ids <= reader.seen():  # it recovers by itself, or after one clean exit (code 75)
            reader.poll(0.5)
            if worker.proc.poll() is not None:
                assert worker.proc.returncode == 75 and worker.starts == 1, worker.log()
                worker.start()
            assert time.monotonic() < deadline, f"{len(records.ids - reader.seen())} ids without output\n{worker.log()}"
        reader.poll(1.5)
        counts = audit("exactly_once_partition_leader_killed", records, reader.outputs, allow_duplicates=False)
        after = [o for o in reader.outputs if o.timestamp_ms >= killed_ms]
        counts.extra = {"guarantee": "exactly_once", "lost": 0, "killed_broker": victim,
                        "partitions_it_led": sorted(led), "outputs_seen_at_kill": seen_at_kill,
                        "outputs_after_kill": len(after), "worker_starts": worker.starts}
        report(counts)
        reader.close()
        wait_committed(cluster.live_bootstrap(), topics.group, topics.input, last, 2)
        assert worker.stop() == 0, worker.log()
    finally:
        cluster.start(victim)


class FakeProducer:
    """Stands in for confluent_kafka.Producer: records are acknowledged on flush()."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self._pending = []

    def produce(self, topic: str, key: bytes | None, value: bytes, on_delivery) -> None:
        self.sent.append((topic, key, value))
        self._pending.append(on_delivery)

    def flush(self, timeout: float) -> int:
        pending, self._pending = self._pending, []
        for callback in pending:
            callback(None, None)
        return 0


def test_transactional_path_shares_the_publishers_fallbacks():
    """A dead letter over the topic's max.message.bytes is refused before it is produced (a broker refusal would
    doom the transaction) and goes down OutcomePublisher's fallback: the same dead letter, original truncated."""
    producer = FakeProducer()
    publisher = OutcomePublisher(ProducerTopic(producer, "verdicts", 200_000), ProducerTopic(producer, "dlq", 200_000))
    big = RawRecord(key=b"k", value=b"x" * 300_000, topic="raw", partition=0, offset=7)
    small = RawRecord(key=b"s", value=b"{", topic="raw", partition=1, offset=3)
    outcomes = [Outcome(r, dead_letter=dead_letter(r, ErrorKind.INVALID_JSON, "not JSON")) for r in (big, small)]
    asyncio.run(publisher.publish(outcomes))
    assert [(t, k) for t, k, _ in producer.sent] == [("dlq", b"s"), ("dlq", b"k")]
    truncated = json.loads(producer.sent[1][2])
    assert truncated["original_truncated"] is True and truncated["original_size"] == 300_000
    assert truncated["origin"] == {"topic": "raw", "partition": 0, "offset": 7}
    assert publisher.counts["dead_letters"] == 2
    assert len(truncated["original_value"]) < 2 * TRUNCATED_ORIGINAL_BYTES
