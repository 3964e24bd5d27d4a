"""The worker program: assembles the pipeline (worker/assemble.py), joins the fleet (worker/fleet.py), then
runs the engine: the confluent-kafka loop (worker/loop.py, the default; at-least-once or exactly-once) or the
Faust agent (worker/faust_agent.py, MEMEGUARD_WORKER_ENGINE=faust, at-least-once). `--processes N` is
worker/supervisor.py."""

import logging

import faust

from consumer.core.malloc import bound_heap
from consumer.kafka.topics import prepare_topics, wait_for_broker
from consumer.ops.logs import configure_logging, logging_config
from consumer.settings import WorkerSettings
from consumer.worker.assemble import build_pipeline, bundle_watcher, start_ops_server, watch_pipeline
from consumer.worker.control import status_topic_of
from consumer.worker.crash_guard import CrashLoopBreaker
from consumer.worker.faust_agent import create_app
from consumer.worker.fleet import FleetMember
from consumer.worker.loop import run_loop
from consumer.worker.producer_config import output_producer, output_publisher
from consumer.worker.serving_model import set_model_metrics

log = logging.getLogger(__name__)


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
        run_loop(settings, pipeline, watcher, metrics, health, breaker)
        return
    publisher = output_publisher(settings, output_producer(settings))
    app = create_app(settings, pipeline, watcher, metrics, health, breaker, publisher)
    metrics.watch_counts("memeguard_publish", "Outputs published, last-resort dead letters, bookkeeping errors.",
                         "result", lambda: dict(app.memeguard_publisher.counts))
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), redirect_stdouts=False,
                          logging_config=logging_config(settings.log_format, settings.log_level))
    worker.execute_from_commandline()
