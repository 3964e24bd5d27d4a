"""The Faust engine (MEMEGUARD_WORKER_ENGINE=faust, at-least-once): a thin adapter that owns only what is
Faust's, the app, the agent and its batches of events (`take_events`). A batch runs through the same core as
the default loop (worker/batches.py, worker/in_flight.py) and publishes its verdicts, dead letters and
explanations through the same librdkafka producers (worker/producer_config.py); an event is acked, so its offset
may commit, only once its outputs are acknowledged. Records faust-streaming skips around a rebalance are read
back and moderated ahead of the batch (worker/offset_holes.py). Kept because some of the teams this service is
built for run Faust apps."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import faust
from faust.types.tuples import ConsumerMessage

from consumer.core.pipeline import ModerationPipeline, Outcome, RawRecord
from consumer.core.publish import OutcomePublisher
from consumer.kafka.config import KafkaSecurity
from consumer.ops.metrics import PipelineMetrics
from consumer.ops.server import Health
from consumer.settings import WorkerSettings
from consumer.worker.batches import after_publish, give_up, run_batch
from consumer.worker.crash_guard import CrashLoopBreaker
from consumer.worker.explanations import ExplanationPublisher
from consumer.worker.hot_reload import BundleWatcher
from consumer.worker.in_flight import InFlight
from consumer.worker.offset_holes import HoleGuard, HoleReader
from consumer.worker.producer_config import explanations_topic
from consumer.worker.serving_model import swap_model_if_ready

log = logging.getLogger(__name__)

TAIL_CHECK_S = 5.0  # how long the agent is handed nothing before the guard looks for skipped records at the tail


def raw_topic(app: faust.App, name: str) -> faust.TopicT:
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


def create_app(settings: WorkerSettings, pipeline: ModerationPipeline,
               watcher: BundleWatcher | None = None, metrics: PipelineMetrics | None = None,
               health: Health | None = None, breaker: CrashLoopBreaker | None = None,
               publisher: OutcomePublisher | None = None) -> faust.App:
    """The Faust app and its agent. `publisher` (producer_config.output_publisher) publishes the outputs; None
    only for an app whose agent never runs (tests of its configuration)."""
    app = faust.App(
        settings.group_id,
        broker=";".join(f"kafka://{h}" for h in settings.kafka_bootstrap.split(",")),
        broker_credentials=KafkaSecurity().faust_credentials(),  # TLS / SASL from MEMEGUARD_KAFKA_*
        store="memory://",
        autodiscover=False,
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.topic_partitions,
        topic_disable_leader=True,
        producer_acks=-1,
        processing_guarantee="at_least_once",  # exactly_once runs on the confluent engine (settings refuse faust)
        # Room for dead letters that carry a large original; brokers with a smaller limit get a truncated one.
        producer_max_request_size=2 * settings.max_event_bytes,
        # Faster group joins and failure detection than Faust's defaults (see DESIGN, Tansu notes).
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        # aiokafka looks up a partition's start offset (ListOffsets, after a rebalance for a partition with no
        # committed offset yet) at the leader its metadata names, and on NotLeaderForPartition only retries,
        # without refreshing the metadata: after a broker failover it asked the old leader every 100 ms until
        # the next periodic refresh (5 min by default). A 10 s refresh bounds that stall (docs/kafka.md).
        consumer_metadata_max_age_ms=10_000,
    )
    source = raw_topic(app, settings.input_topic)
    app.memeguard_publisher = publisher  # for metrics and tests
    explanations = (ExplanationPublisher(pipeline.explainer, explanations_topic(settings))
                    if pipeline is not None and pipeline.explainer is not None else None)

    async def commit(outcomes: list[Outcome], records: list[RawRecord]) -> None:
        """Faust commits an event's offset once it is acked: the batch's events are acked after this."""
        published = time.perf_counter()
        await publisher.publish(outcomes)
        after_publish(outcomes, pipeline, explanations, metrics, published, publisher.counts)

    in_flight = InFlight(settings.pipeline_depth)
    holes: HoleGuard | None = None  # made when the agent starts: its reader connects to the brokers
    last_handed = time.monotonic()

    async def guarded(acks: list[Callable[[], Awaitable[object]]], records: list[RawRecord],
                      previous: asyncio.Future | None, suspect: bool) -> None:
        """Never raises: a batch that cannot be published ends the process uncommitted."""
        try:
            await run_batch(pipeline, breaker, records, previous, suspect, commit)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            await give_up(breaker, records, e, "batch could not be published", settings.restart_backoff_s)
        for ack in acks:  # in order, after the outputs are acknowledged: only now may the offsets commit
            await ack()

    async def submit(records: list[RawRecord], acks: list) -> None:
        swap_model_if_ready(pipeline, watcher, metrics)
        suspect = breaker is not None and await breaker.begin_batch(records)
        if suspect:  # the one-by-one replay must be alone in flight: its verdict on a record depends on it
            await in_flight.make_room(alone=True)
        in_flight.add(guarded(acks, records, in_flight.last, suspect))
        await in_flight.make_room(alone=suspect)

    async def read_back(lookup: Awaitable[list[RawRecord]], records: list[RawRecord]) -> None:
        """Moderates the records `lookup` finds Faust skipped (ahead of `records`), in batches."""
        try:
            skipped = await lookup
        except Exception as e:  # noqa: BLE001  the broker did not answer: no record's fault
            await give_up(breaker, records, e, "offsets faust skipped could not be read back",
                          settings.restart_backoff_s)
            return
        for start in range(0, len(skipped), settings.max_batch):
            chunk = skipped[start:start + settings.max_batch]
            await submit(chunk, [partial(ack_read_back, app, r) for r in chunk])

    @app.agent(source)
    async def moderate(stream: faust.StreamT) -> None:
        # take_events() acks a batch when this loop body is left; each event holds one more reference
        # (incref) until `guarded` acks it after its outputs are acknowledged, so up to `pipeline_depth`
        # batches are in flight and still commit only once published, in order. On a stop the batches in
        # flight get `shutdown_grace_s` to finish; otherwise the process exits at once without committing.
        nonlocal holes, last_handed
        holes = HoleGuard(HoleReader(settings.kafka_bootstrap, settings.group_id))
        try:
            async for events in stream.take_events(settings.max_batch, within=settings.max_wait_s):
                last_handed = time.monotonic()
                for event in events:
                    event.message.incref()
                records = [RawRecord(key=e.message.key, value=e.message.value, topic=e.message.topic,
                                     partition=e.message.partition, offset=e.message.offset) for e in events]
                await read_back(holes.skipped_before(records, [e.message.generation_id for e in events]), records)
                await submit(records, [partial(stream.ack, e) for e in events])
        except asyncio.CancelledError:
            await in_flight.finish(settings.shutdown_grace_s)
            raise

    @app.timer(TAIL_CHECK_S)
    async def _holes_at_the_tail() -> None:
        """Records Faust skipped with none after them never reach the agent: looked for once it is idle."""
        if (holes is None or not in_flight.idle or app.rebalancing or not app.flow_control.is_active()
                or time.monotonic() - last_handed < TAIL_CHECK_S):
            return
        partitions = [(tp.topic, tp.partition) for tp in app.consumer.assignment() if tp.topic == settings.input_topic]
        await read_back(holes.skipped_at_tail(partitions, app.consumer_generation_id), [])

    if health is not None:
        @app.timer(1.0)
        async def _heartbeat() -> None:  # a blocked event loop stops this and fails /healthz
            health.heartbeat()

    if metrics is not None:
        metrics.watch_lag(lambda: consumer_lag(app))

    if settings.ready_file is not None:
        ready_file: Path = settings.ready_file

        @app.on_rebalance_complete.connect
        async def _mark_ready(sender: faust.App, **kwargs: object) -> None:
            ready_file.parent.mkdir(parents=True, exist_ok=True)
            ready_file.touch()

    return app


async def ack_read_back(app: faust.App, record: RawRecord) -> None:
    """Acks a record read back from a hole (worker/offset_holes.py) as Faust acks an event, so the commit can
    move past its offset."""
    app.consumer.ack(ConsumerMessage(record.topic, record.partition, record.offset, 0.0, 0, [], record.key,
                                     record.value, None))


def consumer_lag(app: faust.App) -> dict[tuple[str, int], int]:
    """High watermark (from fetch responses, which Tansu gets right) minus the committed offset."""
    consumer = app.consumer
    lags = {}
    for tp in consumer.assignment():
        committed = consumer._committed_offset.get(tp)  # Faust keeps no public accessor for it
        lags[(tp.topic, tp.partition)] = max(0, consumer.highwater(tp) - (committed or 0))
    return lags
