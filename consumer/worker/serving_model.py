"""The model a worker serves, for both engines: built by one factory (RuntimeOptions) at start-up and on every
hot reload alike, swapped in between batches when hot reload (worker/hot_reload.py) has a validated one ready,
and reported to the metrics."""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from consumer.core.pipeline import ModerationPipeline
from consumer.core.runtime import BundleRuntime
from consumer.ops.metrics import PipelineMetrics
from consumer.settings import WorkerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeOptions:
    """How every runtime of one worker is built: the start-up one and each hot-reloaded one (same providers,
    threads, batch size, hence the same TensorRT profile and call sizes, and the same engine cache)."""

    providers: str = "auto"
    intra_op_threads: int = 0
    max_batch: int | None = None  # None: the manifest's
    engine_cache_root: Path | None = None

    @classmethod
    def of(cls, settings: WorkerSettings) -> "RuntimeOptions":
        """A worker's: its runtime's batch is the worker's batch (MEMEGUARD_MAX_BATCH), not the manifest's."""
        return cls(settings.providers, settings.intra_op_threads, settings.max_batch, settings.trt_engine_cache_dir)

    def load(self, path: Path | str) -> BundleRuntime:
        return BundleRuntime.load(path, providers=self.providers, intra_op_threads=self.intra_op_threads,
                                  max_batch=self.max_batch, engine_cache_root=self.engine_cache_root)


class ReadyRuntimes(Protocol):
    """What the swap needs of a BundleWatcher."""

    def take_ready(self) -> BundleRuntime | None: ...


def set_model_metrics(metrics: PipelineMetrics, pipeline: ModerationPipeline) -> None:
    rt = pipeline.runtime
    info = rt.model_info
    metrics.set_model(rt.version, info.name, info.version, rt.provider, info.precision)


def swap_model_if_ready(pipeline: ModerationPipeline, watcher: ReadyRuntimes | None,
                        metrics: PipelineMetrics | None) -> None:
    """Between batches; the model version in the cache key changes with it. A batch already prepared
    finishes with the runtime it was prepared with."""
    if watcher is not None and (new := watcher.take_ready()) is not None:
        log.info("model swapped", extra={"old": pipeline.runtime.version, "new": new.version})
        pipeline.runtime = new
        if metrics is not None:
            set_model_metrics(metrics, pipeline)
