"""The worker's consume loop on confluent-kafka (the default engine, MEMEGUARD_WORKER_ENGINE=confluent), serving
both guarantees: at-least-once (the default) and exactly-once (MEMEGUARD_GUARANTEE=exactly_once, one
transaction per batch). The Faust agent (consumer/worker/service.py, MEMEGUARD_WORKER_ENGINE=faust) is the
other engine, at-least-once only. Both run a batch through the same core (consumer/worker/batches.py) and
publish through the same producer (consumer/worker/producer_config.py).

At-least-once: no per-event machinery (half the CPU per cache hit of the Faust agent, docs/benchmarks.md). Up to
MEMEGUARD_PIPELINE_DEPTH batches are in flight (the next one prepared while one is in inference). A batch's
outputs are produced and acknowledged, then its offsets are committed, in batch order (asynchronously, so the
next batch need not wait; synchronously for partitions being revoked and at shutdown). An output that cannot
be acknowledged ends the process uncommitted (code 75, batches.abandon()); after a crash the batch is consumed
again and may be published twice.

Exactly-once: one batch at a time (the settings refuse MEMEGUARD_PIPELINE_DEPTH > 1 with it), one batch is one
transaction, on one producer:

    consume(max_batch, max_wait)  ->  pipeline  ->
    begin_transaction; produce every verdict and dead letter; send_offsets_to_transaction(next offsets,
    consumer group metadata); commit_transaction

so a batch's outputs and its input offsets become visible together or not at all (read_committed readers
never see the outputs of an aborted transaction).

Why not Faust's exactly-once: it keeps one transactional producer per *output* partition and commits offsets
per *input* partition, so a verdict can sit in one open transaction while its input offset commits in another,
and with two workers a send can be routed to a producer another worker owns.

Fencing. `transactional.id` is `{group_id}-{instance_id}` (MEMEGUARD_INSTANCE_ID, default the host name):
stable across restarts of one instance, so `init_transactions()` at start aborts whatever transaction the
previous incarnation left open and fences it should it still be alive (it exits: a fatal error). A worker
that lost its partitions in a rebalance (or was dropped from the group) is fenced through the consumer
group metadata (KIP-447): the offsets commit is refused for its stale generation, the transaction is
aborted, and the partitions' new owner starts from the last committed offsets.

Errors. Anything that fails inside a transaction aborts it; the consumer is rewound to the batch's first
uncommitted offsets and the records are consumed again (after `MAX_ABORTS_IN_A_ROW` aborts in a row, or a
fatal error, the process exits with code 75: nothing of the batch is committed). Serialisation, the DLQ,
last-resort and truncated dead letters are OutcomePublisher's (consumer/core/publish.py); a record larger than
the topic's `max.message.bytes` is refused before it is produced (a broker-side refusal would doom the whole
transaction), which sends it down the publisher's fallbacks.
"""

import asyncio
import logging
import signal
import socket
import time
from collections import Counter, deque
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from tenacity import RetryCallState, wait_exponential_jitter

from consumer.core.pipeline import ModerationPipeline, Outcome, RawRecord
from consumer.core.publish import CALL_TIMEOUT_S, Deadline, OutputsNotAcknowledged, ProducerTopic
from consumer.kafka.config import client_config
from consumer.ops.metrics import PipelineMetrics
from consumer.ops.server import Health
from consumer.settings import WorkerSettings
from consumer.worker.batches import (
    abandon,
    after_publish,
    give_up,
    one_by_one,
    pipelined_outcomes,
    process_isolating_failures,
)
from consumer.worker.crash_guard import CrashLoopBreaker
from consumer.worker.explanations import ExplanationPublisher
from consumer.worker.hot_reload import BundleWatcher
from consumer.worker.producer_config import (
    delivery_deadline_s,
    max_message_bytes,
    output_producer,
    output_publisher,
    producer_limit,
)
from consumer.worker.serving_model import swap_model_if_ready

log = logging.getLogger(__name__)

WATCHDOG_MARGIN_S = 5.0  # a transactional call still blocked this long after its own timeout is wedged
MAX_ABORTS_IN_A_ROW = 5
# 0.4 s after the first abort, doubled per abort in a row, plus jitter (replicas aborting together retry apart), capped.
ABORT_BACKOFF = wait_exponential_jitter(multiplier=0.4, max=5.0, jitter=0.2)


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


def _kafka_error(e: BaseException) -> KafkaError | None:
    if isinstance(e, KafkaException) and e.args and isinstance(e.args[0], KafkaError):
        return e.args[0]
    return None


class ConsumeLoop:
    def __init__(self, settings: WorkerSettings, pipeline: ModerationPipeline,
                 watcher: BundleWatcher | None = None, metrics: PipelineMetrics | None = None,
                 health: Health | None = None, breaker: CrashLoopBreaker | None = None,
                 transactions: bool = True) -> None:
        self.settings, self.pipeline, self.watcher = settings, pipeline, watcher
        self.transactions = transactions
        self.metrics, self.health, self.breaker = metrics, health, breaker
        self.transactional_id = transactional_id(settings)
        self.counts: Counter[str] = Counter()  # transactions committed / aborted, rebalances
        self.consumer = Consumer(client_config(settings.kafka_bootstrap, {
            "group.id": settings.group_id,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,  # as the Faust worker: fast failure detection
            "heartbeat.interval.ms": 1000,
            # librdkafka prefetches up to 64 MiB by default: worker memory that follows the backlog, not the
            # batch (bench_soak: 80 MiB less RSS at 16 MiB). Fewer records than its default 100,000 starved the
            # loop (512 at batch 64: 0.6x the hits/s, bench_hotpath).
            "queued.max.messages.kbytes": 16 * 1024,
            **({} if transactions else {"on_commit": self._on_commit}),
            "logger": log,
        }))
        self.producer = output_producer(settings, self.transactional_id if transactions else None)
        self.deadline = Deadline()
        self.publisher = output_publisher(settings, self.producer, self.deadline, transactions)
        self.explanations = None
        if pipeline.explainer is not None:  # best effort, after the verdict: outside the transactions
            plain = Producer(client_config(settings.kafka_bootstrap, {"enable.idempotence": True, "acks": "all",
                                                                      "logger": log}))
            self.explanations = ExplanationPublisher(pipeline.explainer, ProducerTopic(
                plain, settings.explanations_topic, max_message_bytes(settings, settings.explanations_topic,
                                                                      producer_limit(settings))))
        self._uncommitted: dict[tuple[str, int], int] = {}  # batch in hand: first uncommitted offset per partition
        self._committed: dict[tuple[str, int], int] = {}  # for the lag gauge
        self._in_transaction = False
        self._aborts_in_a_row = 0
        self._closed = False
        self._stop: asyncio.Event | None = None

    # -- group membership ---------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.counts["assignments"] += 1
        log.info("partitions assigned", extra={"partitions": [f"{p.topic}/{p.partition}" for p in partitions]})
        if self.settings.ready_file is not None:
            self.settings.ready_file.parent.mkdir(parents=True, exist_ok=True)
            self.settings.ready_file.touch()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """consume() is never called with a transaction open, so there is none to finish here; should one
        be open all the same, it is aborted before the partitions go (their new owner starts from the last
        committed offsets)."""
        self.counts["revocations"] += 1
        log.info("partitions revoked", extra={"partitions": [f"{p.topic}/{p.partition}" for p in partitions]})
        if not self.transactions:  # what was published must not be consumed again by the next owner
            self._commit_now(partitions)
        if self._in_transaction:
            try:
                self.producer.abort_transaction(CALL_TIMEOUT_S)
            finally:
                self._in_transaction = False
        for p in partitions:
            self._uncommitted.pop((p.topic, p.partition), None)
            self._committed.pop((p.topic, p.partition), None)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """An asynchronous commit's result: a failed one leaves the batch to be consumed again (at-least-once)."""
        if err is not None:
            self.counts["commit_errors"] += 1
            log.warning("offsets commit failed: %s", err)

    def lag(self) -> dict[tuple[str, int], int]:
        """High watermark (from fetch responses) minus the offset this worker last committed."""
        if self._closed:
            return {}
        lags = {}
        try:
            for tp in self.consumer.assignment():
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                committed = self._committed.get((tp.topic, tp.partition))
                if committed is not None and high >= 0:
                    lags[(tp.topic, tp.partition)] = max(0, high - committed)
        except (KafkaException, RuntimeError):
            return {}
        return lags

    # -- the loop -----------------------------------------------------------------------------------------

    async def run(self) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        heartbeat = asyncio.ensure_future(self._heartbeat())
        if self.transactions:
            # Fences an earlier incarnation of this instance and aborts the transaction it may have left open.
            await blocking(self.producer.init_transactions, 60.0, timeout_s=60.0)
            log.info("exactly-once worker starting", extra={"transactional_id": self.transactional_id,
                                                              "group": self.settings.group_id})
        else:
            log.info("confluent-kafka worker starting (at-least-once)", extra={"group": self.settings.group_id})
        self.consumer.subscribe([self.settings.input_topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_revoke)
        try:
            if self.transactions or self.settings.pipeline_depth == 1:
                while not self._stop.is_set():
                    if records := self._records(await self._consume()):
                        await self._run_batch(records)
            else:
                await self._run_pipelined()
        finally:
            heartbeat.cancel()
        await self._shutdown()

    async def _consume(self) -> list[Message]:
        return await asyncio.to_thread(self.consumer.consume, self.settings.max_batch, self.settings.max_wait_s)

    async def _run_pipelined(self) -> None:
        """Without transactions: up to `pipeline_depth` batches in flight, as the Faust agent runs them. Batch
        N+1 is fetched, parsed, looked up and decoded while N is in inference; outputs go out and offsets
        commit in batch order. A batch that cannot be published ends the process uncommitted."""
        in_flight: deque[asyncio.Future] = deque()
        while not self._stop.is_set():
            records = self._records(await self._consume())
            while in_flight and in_flight[0].done():
                in_flight.popleft().result()
            if not records:
                continue
            swap_model_if_ready(self.pipeline, self.watcher, self.metrics)
            if self.breaker is not None and await self.breaker.begin_batch(records):
                await asyncio.gather(*in_flight)  # the one-by-one replay must be alone in flight
                in_flight.clear()
                await self._guarded(records, self._one_by_one(records, None))
                continue
            previous = in_flight[-1] if in_flight else None
            in_flight.append(asyncio.ensure_future(self._guarded(records, self._pipelined_batch(records, previous))))
            while len(in_flight) >= self.settings.pipeline_depth:
                await in_flight.popleft()
        pending = [t for t in in_flight if not t.done()]
        if pending:
            log.info("stop requested; finishing the %d batches in flight", len(pending))
            _, late = await asyncio.wait(pending, timeout=self.settings.shutdown_grace_s)
            if late:
                abandon("in-flight batch could not finish before shutdown; abandoning it uncommitted", 0.0)

    async def _pipelined_batch(self, records: list[RawRecord], previous: asyncio.Future | None) -> None:
        await self._commit(await pipelined_outcomes(self.pipeline, records, previous), records, None)
        if self.breaker is not None:
            await self.breaker.finish(records)

    async def _guarded(self, records: list[RawRecord], work: Any) -> None:
        """Never raises: a batch that cannot be published ends the process uncommitted."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            await self._give_up(records, e, "batch could not be published")

    async def _heartbeat(self) -> None:
        while self.health is not None:
            self.health.heartbeat()
            await asyncio.sleep(1.0)

    def _records(self, messages: list[Message]) -> list[RawRecord]:
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        records = []
        for m in messages:
            if (err := m.error()) is not None:
                if err.fatal():
                    raise KafkaException(err)
                log.warning("consumer error: %s", err)
                continue
            if (m.topic(), m.partition()) not in assigned:  # fetched before a revocation
                continue
            records.append(RawRecord(key=m.key(), value=m.value(), topic=m.topic(), partition=m.partition(),
                                     offset=m.offset()))
        return records

    async def _run_batch(self, records: list[RawRecord]) -> None:
        """Finishes the batch, rewinds it, or exits. On SIGTERM the batch in flight still gets
        MEMEGUARD_SHUTDOWN_GRACE_S to commit."""
        task = asyncio.ensure_future(self._handle(records))
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                log.info("stop requested mid-batch; finishing the %d in-flight events", len(records))
                done, _ = await asyncio.wait({task}, timeout=self.settings.shutdown_grace_s)
                if not done:
                    abandon("in-flight batch could not finish before shutdown; abandoning it uncommitted", 0.0)
        finally:
            stop.cancel()
        try:
            task.result()
            self._aborts_in_a_row = 0
        except Rewound as e:
            self._aborts_in_a_row += 1
            if self._aborts_in_a_row >= MAX_ABORTS_IN_A_ROW:
                await self._give_up(records, e, f"{self._aborts_in_a_row} transactions aborted in a row")
            if self.breaker is not None:  # an abort is no crash: the records need no one-by-one replay
                await self.breaker.finish(records)
            backoff = RetryCallState(None, None, (), {})
            backoff.attempt_number = self._aborts_in_a_row
            await asyncio.sleep(ABORT_BACKOFF(backoff))
        except Exception as e:
            await self._give_up(records, e, "batch could not be committed")

    async def _give_up(self, records: list[RawRecord], error: BaseException, reason: str) -> None:
        await give_up(self.breaker, records, error, reason, self.settings.restart_backoff_s)

    async def _handle(self, records: list[RawRecord]) -> None:
        """One batch at a time (exactly-once: a transaction per published unit; at-least-once with pipeline_depth 1)."""
        swap_model_if_ready(self.pipeline, self.watcher, self.metrics)
        # Captured now: should the group re-form before the commit, the commit is refused (KIP-447).
        group_metadata = self.consumer.consumer_group_metadata()
        self._uncommitted = {}
        for r in records:
            self._uncommitted.setdefault((r.topic, r.partition), r.offset)
        breaker = self.breaker
        if breaker is None or not await breaker.begin_batch(records):
            await self._commit(await process_isolating_failures(self.pipeline, records), records, group_metadata)
            if breaker is not None:
                await breaker.finish(records)
            return
        await self._one_by_one(records, group_metadata)

    async def _one_by_one(self, records: list[RawRecord], group_metadata: Any) -> None:
        """A worker died with one of these in flight: one record (one transaction) at a time."""
        async def commit(outcomes: list[Outcome], batch: list[RawRecord]) -> None:
            await self._commit(outcomes, batch, group_metadata)

        await one_by_one(self.pipeline, self.breaker, records, commit)

    async def _commit(self, outcomes: list[Outcome], records: list[RawRecord], group_metadata: Any) -> None:
        """One transaction: every output of `outcomes` and the offsets after `records` (without transactions:
        the outputs acknowledged, then the offsets committed)."""
        offsets: dict[tuple[str, int], int] = {}
        for r in records:
            offsets[(r.topic, r.partition)] = max(offsets.get((r.topic, r.partition), 0), r.offset + 1)
        started = time.perf_counter()
        if not self.transactions:
            self.deadline.start(delivery_deadline_s(self.settings))
            await self.publisher.publish(outcomes)  # raises when an output is not acknowledged: nothing commits
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                 asynchronous=True)
        else:
            await self._transaction(outcomes, offsets, group_metadata)
        self.counts["committed"] += 1
        self.counts["transaction_ms"] += round((time.perf_counter() - started) * 1000)
        self._uncommitted.update(offsets)
        self._committed.update(offsets)
        # Nothing after the commit may fail the batch: its outputs and offsets are in.
        after_publish(outcomes, self.pipeline, self.explanations, self.metrics, started, self.publisher.counts)

    def _commit_now(self, partitions: list[TopicPartition]) -> None:
        """Synchronously commit the offsets after what was published, for `partitions` (without transactions:
        before they are revoked, and at shutdown). A partition already lost keeps its last committed offset."""
        positions = [TopicPartition(p.topic, p.partition, self._committed[(p.topic, p.partition)])
                     for p in partitions if (p.topic, p.partition) in self._committed]
        if positions:
            try:
                self.consumer.commit(offsets=positions, asynchronous=False)
            except KafkaException as e:
                log.warning("committing offsets of %d partitions failed: %s", len(positions), e)

    async def _transaction(self, outcomes: list[Outcome], offsets: dict[tuple[str, int], int],
                           group_metadata: Any) -> None:
        try:
            self.producer.begin_transaction()
            self._in_transaction = True
            self.deadline.start(delivery_deadline_s(self.settings))
            await self.publisher.publish(outcomes)
            positions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            await self._call(self.producer.send_offsets_to_transaction, positions, group_metadata, CALL_TIMEOUT_S)
            await self._call(self.producer.commit_transaction, CALL_TIMEOUT_S)
            self._in_transaction = False
        except Exception as e:  # noqa: BLE001 (whatever failed, the transaction must not half-commit)
            await self._abort(e)

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

    async def _shutdown(self) -> None:
        if self.explanations is not None:
            await self.explanations.drain(min(5.0, self.settings.shutdown_grace_s))
        if not self.transactions:
            await asyncio.to_thread(self._commit_now, self.consumer.assignment())
        self._closed = True
        await asyncio.to_thread(self.consumer.close)  # leaves the group: its partitions move at once
        await asyncio.to_thread(self.producer.flush, 5.0)
        if self.breaker is not None:
            await self.breaker.close()
        log.info("worker stopped", extra=dict(self.counts))


def run_loop(settings: WorkerSettings, pipeline: ModerationPipeline, watcher: BundleWatcher | None,
                      metrics: PipelineMetrics, health: Health, breaker: CrashLoopBreaker | None,
                      transactions: bool = True) -> None:
    """Blocks until SIGTERM/SIGINT (then finishes the batch in flight) or exits with code 75."""
    worker = ConsumeLoop(settings, pipeline, watcher, metrics, health, breaker, transactions)
    metrics.watch_counts("memeguard_publish", "Outputs published, last-resort dead letters, bookkeeping errors.",
                         "result", lambda: dict(worker.publisher.counts))
    metrics.watch_counts("memeguard_transactions", "Exactly-once transactions committed and aborted, rebalances.",
                         "event", lambda: {k: v for k, v in worker.counts.items() if k != "transaction_ms"})
    metrics.watch_lag(worker.lag)
    try:
        asyncio.run(worker.run())
    except (KafkaException, ProducerWedged) as e:
        abandon(f"exactly-once worker stopped on a Kafka error: {e}", settings.restart_backoff_s)
