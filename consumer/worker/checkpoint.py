"""Where a batch becomes durable: its outputs published and its input offsets committed, one way per guarantee
(MEMEGUARD_GUARANTEE). The consume loop (worker/loop.py) is the same for both; only its Checkpoint differs
(quix-streams' `Checkpoint` is the model).

- `AcknowledgedCheckpoint` (at_least_once, the default): the outputs are produced and acknowledged, then the
  offsets committed asynchronously, in batch order (synchronously for partitions being revoked and at
  shutdown). Outputs that are not acknowledged raise OutputsNotAcknowledged: nothing commits, the worker exits
  75 and the batch is consumed again, so it may be published twice.
- `TransactionalCheckpoint` (exactly_once): one transaction per batch, on one producer:

      begin_transaction; produce every verdict and dead letter;
      send_offsets_to_transaction(next offsets, consumer group metadata); commit_transaction

  so a batch's outputs and its input offsets become visible together or not at all (read_committed readers
  never see the outputs of an aborted transaction). Anything that fails inside a transaction aborts it and
  rewinds the consumer to the batch's first uncommitted offsets (`Rewound`: the loop backs off and consumes
  them again, and exits 75 after MAX_ABORTS_IN_A_ROW).

Why not Faust's exactly-once: it keeps one transactional producer per *output* partition and commits offsets
per *input* partition, so a verdict can sit in one open transaction while its input offset commits in another,
and with two workers a send can be routed to a producer another worker owns.

Fencing. `transactional.id` is `{group_id}-{instance_id}` (MEMEGUARD_INSTANCE_ID, default the host name):
stable across restarts of one instance, so `init_transactions()` at start aborts whatever transaction the
previous incarnation left open and fences it should it still be alive (it exits: a fatal error). A worker
that lost its partitions in a rebalance (or was dropped from the group) is fenced through the consumer
group metadata (KIP-447): the offsets commit is refused for its stale generation, the transaction is
aborted, and the partitions' new owner starts from the last committed offsets.
"""

import asyncio
import logging
import socket
import time
from collections import Counter
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from consumer.core.pipeline import Outcome, RawRecord
from consumer.core.publish import CALL_TIMEOUT_S, Deadline, OutputsNotAcknowledged
from consumer.settings import WorkerSettings
from consumer.worker.producer_config import delivery_deadline_s, output_producer, output_publisher

log = logging.getLogger(__name__)

WATCHDOG_MARGIN_S = 5.0  # a transactional call still blocked this long after its own timeout is wedged
MAX_ABORTS_IN_A_ROW = 5

Offsets = dict[tuple[str, int], int]  # (topic, partition) -> offset


class Rewound(OutputsNotAcknowledged):
    """The batch's transaction was aborted and the consumer rewound: its records will be consumed again."""


class ProducerWedged(OutputsNotAcknowledged):
    """A transactional call did not return although its timeout has passed. librdkafka's
    send_offsets_to_transaction() ignores its timeout when the group coordinator dies (confluentinc/librdkafka
    #5456, #5511): the producer cannot go on, the process exits (code 75) and its restart takes over."""


async def blocking(fn: Any, *args: Any, timeout_s: float) -> Any:
    """A blocking client call in a thread, given up (ProducerWedged) `WATCHDOG_MARGIN_S` after `timeout_s`."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout_s + WATCHDOG_MARGIN_S)
    except TimeoutError:
        raise ProducerWedged(f"{fn.__name__}() still blocked {timeout_s + WATCHDOG_MARGIN_S:.0f}s after it was "
                             f"called with a {timeout_s:.0f}s timeout") from None


def transactional_id(settings: WorkerSettings) -> str:
    return f"{settings.group_id}-{settings.instance_id or socket.gethostname()}"


def next_offsets(records: list[RawRecord]) -> Offsets:
    """The offsets to commit once `records` are done: one past the last record of each partition."""
    offsets: Offsets = {}
    for r in records:
        offsets[(r.topic, r.partition)] = max(offsets.get((r.topic, r.partition), 0), r.offset + 1)
    return offsets


def _kafka_error(e: BaseException) -> KafkaError | None:
    if isinstance(e, KafkaException) and e.args and isinstance(e.args[0], KafkaError):
        return e.args[0]
    return None


class Checkpoint:
    """What both guarantees share: the consumer whose offsets it commits, the output producer and its
    publisher, and the offsets committed so far (for the lag gauge). Subclasses say how a batch is made
    durable (`commit`) and what happens around it."""

    time_key = "commit_ms"  # counts[time_key]: milliseconds spent making batches durable

    def __init__(self, settings: WorkerSettings, consumer: Consumer, transactional_id: str | None) -> None:
        self.settings, self.consumer = settings, consumer
        self.producer = output_producer(settings, transactional_id)
        self.deadline = Deadline()
        self.publisher = output_publisher(settings, self.producer, self.deadline, transactional_id is not None)
        self.committed: Offsets = {}
        self.counts: Counter[str] = Counter()  # batches committed, transactions aborted, commit errors

    async def start(self) -> None:
        """Before the first batch."""

    def begin(self, records: list[RawRecord]) -> Any:
        """At the start of a batch, before its first record is processed; returns what `commit` needs of it."""
        return None

    async def commit(self, outcomes: list[Outcome], records: list[RawRecord], batch: Any) -> None:
        """Makes `outcomes` and the offsets after `records` durable, or raises (the batch is not committed)."""
        raise NotImplementedError

    def on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The result of an asynchronous offsets commit (librdkafka's on_commit callback)."""

    def revoked(self, partitions: list[TopicPartition]) -> None:
        """`partitions` are about to go to another member of the group."""
        for p in partitions:
            self.committed.pop((p.topic, p.partition), None)

    async def close(self) -> None:
        """At shutdown, after the last batch, before the consumer leaves the group."""
        await asyncio.to_thread(self.producer.flush, 5.0)

    def _counted(self, started: float) -> None:
        self.counts["committed"] += 1
        self.counts[self.time_key] += round((time.perf_counter() - started) * 1000)


class AcknowledgedCheckpoint(Checkpoint):
    """at_least_once: outputs acknowledged, then offsets committed (asynchronously, in batch order)."""

    def __init__(self, settings: WorkerSettings, consumer: Consumer) -> None:
        super().__init__(settings, consumer, None)

    async def start(self) -> None:
        log.info("confluent-kafka worker starting (at-least-once)", extra={"group": self.settings.group_id})

    async def commit(self, outcomes: list[Outcome], records: list[RawRecord], batch: Any) -> None:
        offsets = next_offsets(records)
        started = time.perf_counter()
        self.deadline.start(delivery_deadline_s(self.settings))
        await self.publisher.publish(outcomes)  # raises when an output is not acknowledged: nothing commits
        self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=True)
        self.committed.update(offsets)
        self._counted(started)

    def on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """An asynchronous commit's result: a failed one leaves the batch to be consumed again."""
        if err is not None:
            self.counts["commit_errors"] += 1
            log.warning("offsets commit failed: %s", err)

    def revoked(self, partitions: list[TopicPartition]) -> None:
        self._commit_now(partitions)  # what was published must not be consumed again by the next owner
        super().revoked(partitions)

    async def close(self) -> None:
        await asyncio.to_thread(self._commit_now, self.consumer.assignment())
        await super().close()

    def _commit_now(self, partitions: list[TopicPartition]) -> None:
        """Synchronously commit the offsets after what was published, for `partitions`. A partition already
        lost keeps its last committed offset."""
        positions = [TopicPartition(p.topic, p.partition, self.committed[(p.topic, p.partition)])
                     for p in partitions if (p.topic, p.partition) in self.committed]
        if positions:
            try:
                self.consumer.commit(offsets=positions, asynchronous=False)
            except KafkaException as e:
                log.warning("committing offsets of %d partitions failed: %s", len(positions), e)


class TransactionalCheckpoint(Checkpoint):
    """exactly_once: one transaction per batch (per record while a suspect batch is replayed one by one)."""

    time_key = "transaction_ms"  # bench/bench_eos.py reads it from the worker's last log line

    def __init__(self, settings: WorkerSettings, consumer: Consumer) -> None:
        self.transactional_id = transactional_id(settings)
        super().__init__(settings, consumer, self.transactional_id)
        self._uncommitted: Offsets = {}  # the batch in hand: first uncommitted offset per partition
        self._in_transaction = False

    async def start(self) -> None:
        # Fences an earlier incarnation of this instance and aborts the transaction it may have left open.
        await blocking(self.producer.init_transactions, 60.0, timeout_s=60.0)
        log.info("exactly-once worker starting", extra={"transactional_id": self.transactional_id,
                                                          "group": self.settings.group_id})

    def begin(self, records: list[RawRecord]) -> Any:
        # Captured now: should the group re-form before the commit, the commit is refused (KIP-447).
        self._uncommitted = {}
        for r in records:
            self._uncommitted.setdefault((r.topic, r.partition), r.offset)
        return self.consumer.consumer_group_metadata()

    async def commit(self, outcomes: list[Outcome], records: list[RawRecord], batch: Any) -> None:
        offsets = next_offsets(records)
        started = time.perf_counter()
        try:
            self.producer.begin_transaction()
            self._in_transaction = True
            self.deadline.start(delivery_deadline_s(self.settings))
            await self.publisher.publish(outcomes)
            positions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            await self._call(self.producer.send_offsets_to_transaction, positions, batch, CALL_TIMEOUT_S)
            await self._call(self.producer.commit_transaction, CALL_TIMEOUT_S)
            self._in_transaction = False
        except Exception as e:  # noqa: BLE001 (whatever failed, the transaction must not half-commit)
            await self._abort(e)
        self._uncommitted.update(offsets)
        self.committed.update(offsets)
        self._counted(started)

    def revoked(self, partitions: list[TopicPartition]) -> None:
        """consume() is never called with a transaction open, so there is none to finish here; should one be
        open all the same, it is aborted before the partitions go (their new owner starts from the last
        committed offsets)."""
        if self._in_transaction:
            try:
                self.producer.abort_transaction(CALL_TIMEOUT_S)
            finally:
                self._in_transaction = False
        for p in partitions:
            self._uncommitted.pop((p.topic, p.partition), None)
        super().revoked(partitions)

    async def _call(self, fn: Any, *args: Any) -> None:
        """A transactional call, retried while its error says it may be."""
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while True:
            try:
                await blocking(fn, *args, timeout_s=CALL_TIMEOUT_S)
                return
            except KafkaException as e:
                err = _kafka_error(e)
                if err is None or not err.retriable() or err.txn_requires_abort() or time.monotonic() > deadline:
                    raise
                log.warning("%s: retriable error %s; retrying", fn.__name__, err)
                await asyncio.sleep(0.1)

    async def _abort(self, error: Exception) -> None:
        """Abort the open transaction and rewind to the first uncommitted offsets (raises Rewound), or raise
        the error when the producer cannot go on (fatal, fenced by a newer incarnation)."""
        err = _kafka_error(error)
        if isinstance(error, ProducerWedged) or (err is not None and err.fatal()):
            self._in_transaction = False
            raise error
        log.warning("transaction aborted: %s; rewinding the batch", error)
        try:
            await blocking(self.producer.abort_transaction, CALL_TIMEOUT_S, timeout_s=CALL_TIMEOUT_S)
        except KafkaException as e:
            self._in_transaction = False
            raise e from error
        self._in_transaction = False
        self.counts["aborted"] += 1
        for (topic, partition), offset in self._uncommitted.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as e:  # no longer assigned: its next owner starts from the committed offset
                log.info("not rewinding %s/%d: %s", topic, partition, e)
        raise Rewound(str(error)) from error


def checkpoint_for(settings: WorkerSettings, consumer: Consumer) -> Checkpoint:
    if settings.guarantee == "exactly_once":
        return TransactionalCheckpoint(settings, consumer)
    return AcknowledgedCheckpoint(settings, consumer)
