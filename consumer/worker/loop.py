"""The worker's consume loop on confluent-kafka (the default engine, MEMEGUARD_WORKER_ENGINE=confluent), one
loop for both guarantees: how a batch becomes durable is its Checkpoint's (worker/checkpoint.py; at-least-once
by default, exactly-once with MEMEGUARD_GUARANTEE=exactly_once). The Faust agent (worker/faust_agent.py) is the
other engine, at-least-once only. Both run a batch through worker/batches.py and keep batches in flight with
worker/in_flight.py.

    consume(max_batch, max_wait) -> records -> [crash-loop breaker: suspect?] -> run_batch(pipeline)
        -> checkpoint.commit(outcomes, records) -> bookkeeping (logs, metrics, explanations)

Up to MEMEGUARD_PIPELINE_DEPTH batches are in flight at least once (the next one prepared while one is in
inference); exactly-once runs one at a time (the settings refuse a depth over 1 with it), because a rewind
after an aborted transaction must happen before the next consume. A batch that cannot be committed ends the
process uncommitted (code 75, batches.give_up): it is consumed again after the restart. A transaction aborted
(checkpoint.Rewound) is retried after a backoff, MAX_ABORTS_IN_A_ROW times. No per-event machinery: half the
CPU per cache hit of the Faust agent (docs/benchmarks.md).
"""

import asyncio
import logging
import signal
import time

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from tenacity import RetryCallState, wait_exponential_jitter

from consumer.core.pipeline import ModerationPipeline, Outcome, RawRecord
from consumer.kafka.config import client_config
from consumer.ops.metrics import PipelineMetrics
from consumer.ops.server import Health
from consumer.settings import WorkerSettings
from consumer.worker.batches import abandon, after_publish, give_up, run_batch
from consumer.worker.checkpoint import MAX_ABORTS_IN_A_ROW, ProducerWedged, Rewound, checkpoint_for
from consumer.worker.crash_guard import CrashLoopBreaker
from consumer.worker.explanations import ExplanationPublisher
from consumer.worker.hot_reload import BundleWatcher
from consumer.worker.in_flight import InFlight
from consumer.worker.producer_config import explanations_topic
from consumer.worker.serving_model import swap_model_if_ready

log = logging.getLogger(__name__)

# 0.4 s after the first abort, doubled per abort in a row, plus jitter (replicas aborting together retry apart), capped.
ABORT_BACKOFF = wait_exponential_jitter(multiplier=0.4, max=5.0, jitter=0.2)


class ConsumeLoop:
    def __init__(self, settings: WorkerSettings, pipeline: ModerationPipeline,
                 watcher: BundleWatcher | None = None, metrics: PipelineMetrics | None = None,
                 health: Health | None = None, breaker: CrashLoopBreaker | None = None) -> None:
        self.settings, self.pipeline, self.watcher = settings, pipeline, watcher
        self.metrics, self.health, self.breaker = metrics, health, breaker
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
            "on_commit": lambda err, partitions: self.checkpoint.on_commit(err, partitions),
            "logger": log,
        }))
        self.checkpoint = checkpoint_for(settings, self.consumer)
        self.publisher = self.checkpoint.publisher
        # exactly-once: one batch at a time (the settings refuse more), so a rewind precedes the next consume.
        self.depth = 1 if settings.guarantee == "exactly_once" else settings.pipeline_depth
        self.counts = self.checkpoint.counts  # + assignments, revocations
        self.explanations = None
        if pipeline.explainer is not None:  # best effort, after the verdict: outside any transaction
            self.explanations = ExplanationPublisher(pipeline.explainer, explanations_topic(settings))
        self._aborts_in_a_row = 0
        self._closed = False
        self._stop = asyncio.Event()

    # -- group membership ---------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.counts["assignments"] += 1
        log.info("partitions assigned", extra={"partitions": [f"{p.topic}/{p.partition}" for p in partitions]})
        if self.settings.ready_file is not None:
            self.settings.ready_file.parent.mkdir(parents=True, exist_ok=True)
            self.settings.ready_file.touch()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.counts["revocations"] += 1
        log.info("partitions revoked", extra={"partitions": [f"{p.topic}/{p.partition}" for p in partitions]})
        self.checkpoint.revoked(partitions)

    def lag(self) -> dict[tuple[str, int], int]:
        """High watermark (from fetch responses) minus the offset this worker last committed."""
        if self._closed:
            return {}
        lags = {}
        try:
            for tp in self.consumer.assignment():
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                committed = self.checkpoint.committed.get((tp.topic, tp.partition))
                if committed is not None and high >= 0:
                    lags[(tp.topic, tp.partition)] = max(0, high - committed)
        except (KafkaException, RuntimeError):
            return {}
        return lags

    # -- the loop -----------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Until SIGTERM/SIGINT; then the batches in flight get MEMEGUARD_SHUTDOWN_GRACE_S to commit."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        heartbeat = asyncio.ensure_future(self._heartbeat())
        await self.checkpoint.start()
        self.consumer.subscribe([self.settings.input_topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_revoke)
        in_flight = InFlight(self.depth)
        try:
            while not self._stop.is_set():
                records = self._records(await asyncio.to_thread(
                    self.consumer.consume, self.settings.max_batch, self.settings.max_wait_s))
                await in_flight.make_room(self._stop)  # reaps the batches done
                if not records:
                    continue
                swap_model_if_ready(self.pipeline, self.watcher, self.metrics)
                suspect = self.breaker is not None and await self.breaker.begin_batch(records)
                if suspect:  # the one-by-one replay must be alone in flight: its verdict on a record depends on it
                    await in_flight.make_room(alone=True)
                in_flight.add(self._guarded(records, in_flight.last, suspect))
                await in_flight.make_room(self._stop, alone=suspect)
            await in_flight.finish(self.settings.shutdown_grace_s)
        finally:
            heartbeat.cancel()
        await self._shutdown()

    async def _guarded(self, records: list[RawRecord], previous: asyncio.Future | None, suspect: bool) -> None:
        """Never raises: a batch that cannot be committed ends the process uncommitted; an aborted
        transaction is retried after a backoff (the consumer was rewound to the batch)."""
        batch = self.checkpoint.begin(records)

        async def commit(outcomes: list[Outcome], committed: list[RawRecord]) -> None:
            published = time.perf_counter()
            await self.checkpoint.commit(outcomes, committed, batch)
            # Nothing after the commit may fail the batch: its outputs and offsets are in.
            after_publish(outcomes, self.pipeline, self.explanations, self.metrics, published,
                          self.publisher.counts)

        try:
            await run_batch(self.pipeline, self.breaker, records, previous, suspect, commit)
            self._aborts_in_a_row = 0
        except asyncio.CancelledError:
            raise
        except Rewound as e:
            self._aborts_in_a_row += 1
            if self._aborts_in_a_row >= MAX_ABORTS_IN_A_ROW:
                await self._give_up(records, e, f"{self._aborts_in_a_row} transactions aborted in a row")
            if self.breaker is not None:  # an abort is no crash: the records need no one-by-one replay
                await self.breaker.take_back(records)
            backoff = RetryCallState(None, None, (), {})
            backoff.attempt_number = self._aborts_in_a_row
            await asyncio.sleep(ABORT_BACKOFF(backoff))
        except Exception as e:  # noqa: BLE001
            await self._give_up(records, e, "batch could not be committed")

    async def _give_up(self, records: list[RawRecord], error: BaseException, reason: str) -> None:
        await give_up(self.breaker, records, error, reason, self.settings.restart_backoff_s)

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

    async def _shutdown(self) -> None:
        if self.explanations is not None:
            await self.explanations.drain(min(5.0, self.settings.shutdown_grace_s))
        await self.checkpoint.close()
        self._closed = True
        await asyncio.to_thread(self.consumer.close)  # leaves the group: its partitions move at once
        if self.breaker is not None:
            await self.breaker.close()
        log.info("worker stopped", extra=dict(self.counts))


def run_loop(settings: WorkerSettings, pipeline: ModerationPipeline, watcher: BundleWatcher | None,
             metrics: PipelineMetrics, health: Health, breaker: CrashLoopBreaker | None) -> None:
    """Blocks until SIGTERM/SIGINT (then finishes the batches in flight) or exits with code 75."""
    worker = ConsumeLoop(settings, pipeline, watcher, metrics, health, breaker)
    metrics.watch_counts("memeguard_publish", "Outputs published, last-resort dead letters, bookkeeping errors.",
                         "result", lambda: dict(worker.publisher.counts))
    metrics.watch_counts("memeguard_transactions", "Batches committed, transactions aborted, rebalances.",
                         "event", lambda: {k: v for k, v in worker.counts.items() if not k.endswith("_ms")})
    metrics.watch_lag(worker.lag)
    try:
        asyncio.run(worker.run())
    except (KafkaException, ProducerWedged) as e:
        abandon(f"worker stopped on a Kafka error: {e}", settings.restart_backoff_s)
