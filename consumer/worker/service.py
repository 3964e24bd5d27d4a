"""The worker program: builds the pipeline, then runs the confluent-kafka loop (worker/loop.py, the default,
at-least-once or exactly-once) or the Faust agent defined here (MEMEGUARD_WORKER_ENGINE=faust, at-least-once);
`--processes N` supervises N of them. Both engines run a batch through worker/batches.py and publish through
worker/producer_config.py; the agent owns only what is Faust's: the app, the agent and its batches of events."""

import asyncio
import hashlib
import json
import logging
import os
import time
from collections import deque
from pathlib import Path

import faust
import yaml

from consumer.core.cache import VerdictCache
from consumer.core.fetch import FetchPolicy, ImageFetcher
from consumer.core.malloc import bound_heap
from consumer.core.pipeline import ModerationPipeline, Outcome, RawRecord
from consumer.core.policy import load_policy_file
from consumer.core.publish import OutcomePublisher
from consumer.core.runtime import BundleRuntime
from consumer.enrich import EnrichmentPipeline
from consumer.kafka.config import KafkaSecurity
from consumer.kafka.topics import prepare_topics, wait_for_broker
from consumer.ops.logs import configure_logging, logging_config
from consumer.ops.metrics import PipelineMetrics
from consumer.ops.server import Health, OpsServer, broker_probe, redis_probe
from consumer.settings import WorkerSettings
from consumer.worker.batches import abandon, after_publish, give_up, one_by_one, pipelined_outcomes
from consumer.worker.control import FleetMember, status_topic_of
from consumer.worker.crash_guard import CrashLoopBreaker
from consumer.worker.explanations import ExplanationPublisher
from consumer.worker.hot_reload import BundleWatcher
from consumer.worker.loop import run_loop
from consumer.worker.producer_config import output_producer, output_publisher
from consumer.worker.serving_model import RuntimeOptions, set_model_metrics, swap_model_if_ready

log = logging.getLogger(__name__)


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
    explanations = (ExplanationPublisher(pipeline.explainer, raw_topic(app, settings.explanations_topic))
                    if pipeline is not None and pipeline.explainer is not None else None)

    async def publish(outcomes: list[Outcome], records: list[RawRecord] | None = None) -> None:
        published = time.perf_counter()
        await publisher.publish(outcomes)
        after_publish(outcomes, pipeline, explanations, metrics, published, publisher.counts)

    async def handle(records: list[RawRecord], previous: asyncio.Future | None) -> None:
        await publish(await pipelined_outcomes(pipeline, records, previous))
        if breaker is not None:
            await breaker.finish(records)

    async def run_batch(stream: faust.StreamT, events: list, records: list[RawRecord],
                        previous: asyncio.Future | None, suspect: bool) -> None:
        """Never raises: a batch that cannot be published ends the process uncommitted."""
        try:
            if suspect:
                await one_by_one(pipeline, breaker, records, publish)
            else:
                await handle(records, previous)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            await give_up(breaker, records, e, "batch could not be published", settings.restart_backoff_s)
        for event in events:  # in order, after the outputs are acknowledged: only now may the offsets commit
            await stream.ack(event)

    @app.agent(source)
    async def moderate(stream: faust.StreamT) -> None:
        # take_events() acks a batch when this loop body is left; each event holds one more reference
        # (incref) until run_batch acks it after its outputs are acknowledged, so up to `pipeline_depth`
        # batches are in flight and still commit only once published, in order. On a stop the batches in
        # flight get `shutdown_grace_s` to finish; otherwise the process exits at once without committing.
        in_flight: deque[asyncio.Future] = deque()
        try:
            async for events in stream.take_events(settings.max_batch, within=settings.max_wait_s):
                for event in events:
                    event.message.incref()
                records = [RawRecord(key=e.message.key, value=e.message.value, topic=e.message.topic,
                                     partition=e.message.partition, offset=e.message.offset) for e in events]
                swap_model_if_ready(pipeline, watcher, metrics)
                suspect = breaker is not None and await breaker.begin_batch(records)
                if suspect:  # the one-by-one replay must be alone in flight: its verdict on a record depends on it
                    await asyncio.shield(asyncio.gather(*in_flight))
                previous = in_flight[-1] if in_flight else None
                in_flight.append(asyncio.ensure_future(run_batch(stream, list(events), records, previous, suspect)))
                while in_flight and (len(in_flight) >= settings.pipeline_depth or suspect or in_flight[0].done()):
                    await asyncio.shield(in_flight[0])
                    in_flight.popleft()
        except asyncio.CancelledError:
            pending = [t for t in in_flight if not t.done()]
            if pending:
                log.info("stop requested; finishing the %d batches in flight", len(pending))
                _, late = await asyncio.wait(pending, timeout=settings.shutdown_grace_s)
                if late:
                    abandon("in-flight batch could not finish before shutdown; abandoning it uncommitted", 0.0)
            raise

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


def consumer_lag(app: faust.App) -> dict[tuple[str, int], int]:
    """High watermark (from fetch responses, which Tansu gets right) minus the committed offset."""
    consumer = app.consumer
    lags = {}
    for tp in consumer.assignment():
        committed = consumer._committed_offset.get(tp)  # Faust keeps no public accessor for it
        lags[(tp.topic, tp.partition)] = max(0, consumer.highwater(tp) - (committed or 0))
    return lags


def start_ops_server(settings: WorkerSettings) -> tuple[PipelineMetrics, Health]:
    """Started before the bundle loads (a TensorRT engine build can take minutes): /readyz says `loading`
    meanwhile. Metrics are collected whether or not a port is configured; the HTTP server only when it is."""
    metrics = PipelineMetrics("worker")
    health = Health(bundle=lambda: "loading the model bundle", metrics=metrics)
    if settings.metrics_port:  # the probes hold a broker and a Redis connection: only when someone asks
        health.broker = broker_probe(settings.kafka_bootstrap)
        health.redis = redis_probe(settings.redis_url)
        OpsServer(metrics, health, settings.metrics_port).start()
    return metrics, health


def watch_pipeline(metrics: PipelineMetrics, health: Health, pipeline: ModerationPipeline) -> None:
    set_model_metrics(metrics, pipeline)
    metrics.watch_counts("memeguard_cache_ops", "Verdict cache hits, misses, errors, skipped, stored.", "result",
                         lambda: dict(pipeline.cache.counts))
    health.bundle = lambda: None if pipeline.runtime is not None else "no bundle loaded"


def build_pipeline(settings: WorkerSettings) -> ModerationPipeline:
    runtime = RuntimeOptions.of(settings).load(settings.bundle_path)  # as every hot reload builds it (bundle_watcher)
    runtime.warmup()
    enrichment = build_enrichment(settings)
    fetcher = ImageFetcher(FetchPolicy.from_settings(settings))
    return ModerationPipeline(
        runtime=runtime,
        cache=VerdictCache(settings.redis_url, settings.cache_ttl_s, settings.redis_timeout_s,
                           settings.redis_retry_after_s),
        fetcher=fetcher,
        decoder=fetcher.decoder,
        policy=load_policy_file(settings.policy_file),
        max_event_bytes=settings.max_event_bytes,
        max_image_pixels=settings.max_image_pixels,
        enricher=enrichment.enrich if enrichment and enrichment.stages else None,
        explainer=enrichment.explain if enrichment and enrichment.explainer else None,
        cache_variant=enrichment_fingerprint(settings),
    )


def enrichment_fingerprint(settings: WorkerSettings) -> str:
    """Enrichment that can change scores (OCR text for memes posted without any) keys its own cache entries;
    the explainer only annotates, so it is left out."""
    stages = sorted(s for s in settings.enrich_stages if s != "explainer")
    if not stages:
        return ""
    options = settings.enrich_options_file.read_bytes() if settings.enrich_options_file is not None else b""
    digest = hashlib.sha256(json.dumps(stages).encode() + b"\0" + options).hexdigest()
    return f"enrich-{digest[:8]}"


def build_enrichment(settings: WorkerSettings) -> EnrichmentPipeline | None:
    if not settings.enrich_stages:
        return None
    options = {}
    if settings.enrich_options_file is not None:
        options = yaml.safe_load(settings.enrich_options_file.read_text()) or {}
    if settings.explainer_url:
        options.setdefault("explainer", {}).update(
            {"url": settings.explainer_url, **({"model": settings.explainer_model} if settings.explainer_model else {})})
    pipe = EnrichmentPipeline.from_names(settings.enrich_stages, options)
    pipe.warmup()
    log.info("enrichment stages: %s", pipe.stage_names)
    return pipe


def bundle_watcher(settings: WorkerSettings, serving: BundleRuntime) -> BundleWatcher:
    """Hot reload, each reloaded runtime built as build_pipeline() built the serving one."""
    return BundleWatcher(settings.bundle_path, current=serving, options=RuntimeOptions.of(settings),
                         poll_interval_s=settings.bundle_poll_s)


def run_worker(settings: WorkerSettings) -> None:
    """Blocks until SIGTERM/SIGINT. Un-acknowledged events of an interrupted batch are re-delivered."""
    bound_heap(settings.malloc_mmap_threshold_bytes, settings.malloc_arena_max)  # before any thread starts
    configure_logging(settings.log_format, settings.log_level)
    if settings.ready_file is not None:  # a restarted container is not ready until it consumes again
        settings.ready_file.unlink(missing_ok=True)
    metrics, health = start_ops_server(settings)  # first: probes answer (live, not ready) during the broker wait
    wait_for_broker(settings.kafka_bootstrap, settings.startup_timeout_s)
    prepare_topics(settings, [settings.input_topic, settings.output_topic, settings.dlq_topic]
                   + ([settings.explanations_topic] if "explainer" in settings.enrich_stages else []))
    pipeline = build_pipeline(settings)
    watch_pipeline(metrics, health, pipeline)
    log.info("worker starting", extra={"group": settings.group_id, "model": pipeline.runtime.version,
                                       "provider": pipeline.runtime.provider, "max_batch": settings.max_batch})
    watcher = None
    if settings.watch_bundle:
        watcher = bundle_watcher(settings, pipeline.runtime).start()
        status_topic = status_topic_of(settings.control_topic, settings.status_topic)
        prepare_topics(settings, [settings.control_topic], partitions=1)
        # Compacted: the latest status of every worker id stays readable, however long the fleet runs.
        prepare_topics(settings, [status_topic], partitions=1, config={"cleanup.policy": "compact"})
        # The fleet's latest rollout (memeguard rollout) is loaded and checked before the first batch.
        FleetMember(settings.kafka_bootstrap, settings.control_topic, status_topic, watcher, pipeline.runtime,
                    metrics, settings.worker_id, settings.fleet_heartbeat_s).start(settings.startup_timeout_s)
        if (new := watcher.take_ready()) is not None:
            pipeline.runtime = new
            set_model_metrics(metrics, pipeline)
    breaker = (CrashLoopBreaker(settings.redis_url, settings.group_id, settings.redis_timeout_s,
                                settings.redis_retry_after_s) if settings.crash_loop_breaker else None)
    if breaker is not None:
        metrics.watch_counts("memeguard_crash_loop_breaker", "Suspect batches, poison records, Redis errors.", "event",
                             lambda: dict(breaker.counts))
    if settings.worker_engine == "confluent":  # either guarantee; exactly_once with faust is refused by the settings
        run_loop(settings, pipeline, watcher, metrics, health, breaker,
                 transactions=settings.guarantee == "exactly_once")
        return
    publisher = output_publisher(settings, output_producer(settings))
    app = create_app(settings, pipeline, watcher, metrics, health, breaker, publisher)
    metrics.watch_counts("memeguard_publish", "Outputs published, last-resort dead letters, bookkeeping errors.",
                         "result", lambda: dict(app.memeguard_publisher.counts))
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), redirect_stdouts=False,
                          logging_config=logging_config(settings.log_format, settings.log_level))
    worker.execute_from_commandline()


def run_worker_processes(n: int, cuda_devices: list[str] | None = None) -> int:
    """`memeguard worker --processes N`: N members of the consumer group on this host, each its own process
    with its own ONNX Runtime session (decode and inference scale with cores; on a GPU host they share the
    GPU, or take `cuda_devices` round-robin through CUDA_VISIBLE_DEVICES). SIGTERM/SIGINT are forwarded and
    each member finishes its batches in flight; a member that exits on its own (an infrastructure failure
    ends a worker so that its batch is re-delivered) is started again, unless it fails within its first
    seconds (a configuration error), which stops them all."""
    import signal
    import socket
    import subprocess
    import sys

    settings = WorkerSettings()
    base_id = settings.instance_id or socket.gethostname()
    stopping = False

    def env_of(i: int) -> dict[str, str]:
        env = {**os.environ, "MEMEGUARD_INSTANCE_ID": f"{base_id}-{i}"}  # a transactional.id per member
        if settings.ready_file is not None:
            env["MEMEGUARD_READY_FILE"] = f"{settings.ready_file}.{i}"
        if settings.metrics_port:
            env["MEMEGUARD_METRICS_PORT"] = str(settings.metrics_port + i)
        if cuda_devices:
            env["CUDA_VISIBLE_DEVICES"] = cuda_devices[i % len(cuda_devices)]
        if settings.intra_op_threads == 0:  # "one per core" is shared out: N sessions must not oversubscribe
            env["MEMEGUARD_INTRA_OP_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
        return env

    def start(i: int) -> tuple[subprocess.Popen, float]:
        return subprocess.Popen([sys.executable, "-m", "consumer.cli", "worker"], env=env_of(i)), time.monotonic()

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc, _ in members.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    configure_logging(settings.log_format, settings.log_level)
    if settings.ready_file is not None:
        settings.ready_file.unlink(missing_ok=True)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    members = {i: start(i) for i in range(n)}
    log.info("worker processes started", extra={"processes": n, "pids": [p.pid for p, _ in members.values()]})
    ready = False
    while True:
        if not ready and settings.ready_file is not None and all(
                Path(f"{settings.ready_file}.{i}").exists() for i in members):
            settings.ready_file.touch()  # every member consumes
            ready = True
        for i, (proc, started) in list(members.items()):
            code = proc.poll()
            if code is None or stopping:
                continue
            if code != 0 and time.monotonic() - started < 10:
                log.critical("worker process failed at start; stopping all", extra={"member": i, "exit": code})
                forward(signal.SIGTERM, None)
                break
            log.warning("worker process exited; starting it again", extra={"member": i, "exit": code})
            members[i] = start(i)
        if stopping:
            codes = [proc.wait() for proc, _ in members.values()]
            log.info("worker processes stopped", extra={"exits": codes})
            return max(codes, key=abs)
        time.sleep(0.2)

