"""Assembling a worker from its settings: the ops server (first, so probes answer while the bundle loads),
the moderation pipeline (runtime, cache, fetcher, decoder, policy, enrichment) and the hot-reload watcher.
One recipe for every program that runs the pipeline: the worker, `memeguard replay` and `memeguard shadow`."""

import hashlib
import json
import logging

import yaml

from consumer.core.cache import VerdictCache
from consumer.core.fetch import FetchPolicy, ImageFetcher
from consumer.core.images import DecodePolicy, ImageDecoder
from consumer.core.pipeline import ModerationPipeline
from consumer.core.policy import load_policy_file
from consumer.core.runtime import BundleRuntime
from consumer.enrich import EnrichmentPipeline
from consumer.ops.metrics import PipelineMetrics
from consumer.ops.server import Health, OpsServer, broker_probe, redis_probe
from consumer.settings import WorkerSettings
from consumer.worker.hot_reload import BundleWatcher
from consumer.worker.serving_model import RuntimeOptions, set_model_metrics

log = logging.getLogger(__name__)


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
    decoder = ImageDecoder(DecodePolicy.from_settings(settings))
    return ModerationPipeline(
        runtime=runtime,
        cache=VerdictCache(settings.redis_url, settings.cache_ttl_s, settings.redis_timeout_s,
                           settings.redis_retry_after_s),
        fetcher=ImageFetcher(FetchPolicy.from_settings(settings)),
        decoder=decoder,
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
