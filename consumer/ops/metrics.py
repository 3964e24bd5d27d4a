"""Prometheus metrics of the moderation pipeline, shared by the worker and `memeguard replay`.

Each process owns one `PipelineMetrics` with its own registry (never the global default one), so tests
and a replay running beside a worker in one interpreter cannot collide on metric names.
"""

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# Stage timings in ms come from Verdict.timings_ms; the histograms are in seconds (Prometheus convention).
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
E2E_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _CountsCollector(Collector):
    """Exposes a live `collections.Counter` (e.g. VerdictCache.counts) as one labelled counter family.

    Reading the counter at scrape time keeps the cache and publisher free of any Prometheus import.
    """

    def __init__(self, name: str, doc: str, label: str, source: Callable[[], dict[str, int]]) -> None:
        self.name, self.doc, self.label, self.source = name, doc, label, source

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.doc, labels=[self.label])
        for key, value in sorted(self.source().items()):
            family.add_metric([key], float(value))
        yield family


class _LagCollector(Collector):
    """Consumer lag per partition, where the client knows the high watermark from its fetch responses."""

    def __init__(self, source: Callable[[], dict[tuple[str, int], int]]) -> None:
        self.source = source

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("memeguard_consumer_lag", "High watermark minus consumer position.",
                                   labels=["topic", "partition"])
        try:
            lags = self.source()
        except Exception:  # a lag probe must never break a scrape; absent is the honest answer
            lags = {}
        for (topic, partition), lag in sorted(lags.items()):
            family.add_metric([topic, str(partition)], float(lag))
        yield family


class PipelineMetrics:
    def __init__(self, role: str = "worker") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_in = Counter("memeguard_events_in", "Records taken from the input topic.", registry=r)
        self.verdicts_out = Counter("memeguard_verdicts_out", "Verdicts produced, by decision.",
                                    ["decision"], registry=r)
        self.dead_letters = Counter("memeguard_dead_letters", "Dead letters produced, by error kind.",
                                    ["kind"], registry=r)
        self.batch_size = Histogram("memeguard_batch_size", "Records per pipeline batch.",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.stage_seconds = Histogram("memeguard_stage_seconds", "Per-batch time spent in each stage.",
                                       ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self.end_to_end = Histogram("memeguard_end_to_end_seconds",
                                    "From the event's created_at to its verdict being acknowledged.",
                                    buckets=E2E_BUCKETS, registry=r)
        self.batch_failures = Counter("memeguard_batch_failures", "Batches that failed as a whole.", registry=r)
        self.model = Info("memeguard_model", "The model bundle being served.", registry=r)
        self.model_loaded = Gauge("memeguard_model_loaded", "1 while a bundle is loaded; labelled by version.",
                                  ["version", "provider"], registry=r)
        self.fleet_revision = Gauge("memeguard_fleet_revision",
                                    "Fleet rollout revision served (memeguard rollout); 0 = the configured bundle.",
                                    registry=r)
        self.redis_up = Gauge("memeguard_redis_up", "1 when the verdict cache answers, 0 when degraded.", registry=r)
        self.broker_up = Gauge("memeguard_broker_up", "1 when the broker answered the last metadata probe.",
                               registry=r)
        Info("memeguard_process", "Which memeguard process this is.", registry=r).info({"role": role})

    def watch_counts(self, name: str, doc: str, label: str, source: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_CountsCollector(name, doc, label, source))

    def watch_lag(self, source: Callable[[], dict[tuple[str, int], int]]) -> None:
        self.registry.register(_LagCollector(source))

    def set_model(self, version: str, name: str, model_version: str, provider: str, precision: str) -> None:
        self.model.info({"version": version, "name": name, "model_version": model_version,
                         "provider": provider, "precision": precision})
        self.model_loaded.clear()  # after a hot reload only the bundle now served reads 1
        self.model_loaded.labels(version=version, provider=provider).set(1)

    def observe_batch(self, outcomes: list[Any], now: datetime | None = None) -> None:
        """Outcomes of one batch once the broker acknowledged them (consumer.core.pipeline.Outcome)."""
        now = now or datetime.now(UTC)
        self.events_in.inc(len(outcomes))
        self.batch_size.observe(len(outcomes))
        timings: dict[str, float] = {}
        for o in outcomes:
            if o.verdict is not None:
                self.verdicts_out.labels(decision=o.verdict.decision.value).inc()
                timings = timings or o.verdict.timings_ms
                created = getattr(o, "event_time", None)
                if created is not None:
                    self.end_to_end.observe(max(0.0, (now - created).total_seconds()))
            elif o.dead_letter is not None:
                self.dead_letters.labels(kind=o.dead_letter.error_kind.value).inc()
        # Every verdict of a batch carries the same batch timings: observe them once per batch.
        for stage, ms in timings.items():
            self.stage_seconds.labels(stage=stage).observe(ms / 1000.0)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage=stage).observe(seconds)
