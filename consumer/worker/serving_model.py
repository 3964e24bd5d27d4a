"""The model a worker serves, for both engines: swapped in between batches when hot reload
(worker/hot_reload.py) has a validated one ready, and reported to the metrics."""

import logging
from typing import Protocol

from consumer.core.pipeline import ModerationPipeline
from consumer.core.runtime import BundleRuntime
from consumer.ops.metrics import PipelineMetrics

log = logging.getLogger(__name__)


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
