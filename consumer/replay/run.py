"""`memeguard replay`: a labelled topic through the worker's own pipeline, into verdicts and a report.

The pipeline is built by `consumer.worker.assemble.build_pipeline` (same fetcher, cache, policy, enrichment and
runtime as production), with the bundle swapped when `--bundle` is given. With `--compare-bundle` every
batch goes through both pipelines, so the two reports see exactly the same events.
"""

import asyncio
import base64
import io
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from PIL import Image
from tqdm import tqdm

from consumer.core.pipeline import ModerationPipeline, RawRecord
from consumer.errors import ConfigError
from consumer.evaluate.run import load_training_pool
from consumer.kafka.config import client_config
from consumer.kafka.topics import wait_for_broker
from consumer.ops.metrics import PipelineMetrics
from consumer.ops.server import Health, OpsServer
from consumer.replay.html import render
from consumer.replay.report import EventInfo, ReplayResult, build_report, compare_reports, disagreements
from consumer.replay.source import TopicSnapshot
from consumer.settings import WorkerSettings
from schemas import MemeEvent

log = logging.getLogger(__name__)

MAX_THUMBNAILS = 50


@dataclass(frozen=True)
class ReplayOptions:
    topic: str
    out_dir: Path
    bundle: Path | None = None  # None: the production bundle (MEMEGUARD_BUNDLE_PATH)
    compare_bundle: Path | None = None
    labels_file: Path | None = None
    verdicts_topic: str | None = None
    batch_size: int = 32
    use_cache: bool = True
    progress: bool = True
    metrics_port: int = 0
    idle_timeout_s: float = 60.0


def read_label_file(path: Path) -> dict[str, list[str]]:
    """`{"id": ..., "labels": [...]}` records (JSON list or JSONL); ids match an event id or a post id."""
    try:
        records = json.loads(path.read_text()) if path.read_text().lstrip().startswith("[") else [
            json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"Cannot read the labels file {path}: {e}. Give a JSON list or JSON lines of "
                          '{"id": ..., "labels": [...]} records.') from e
    return {str(r.get("event_id", r.get("id"))): list(r["labels"]) for r in records
            if isinstance(r, dict) and isinstance(r.get("labels"), list)}


def event_info(record: RawRecord, joined: dict[str, list[str]]) -> EventInfo | None:
    try:
        payload = json.loads(record.value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("event_id"), str):
        return None
    event_id, post_id = payload["event_id"], str(payload.get("post_id", ""))
    labels = payload.get("labels")
    if not isinstance(labels, list):
        labels = joined.get(event_id, joined.get(post_id))
    metadata = payload.get("metadata") if isinstance(payload.get("metadata"), dict) else {}
    harmful = metadata.get("harmful") if isinstance(metadata.get("harmful"), bool) else (
        bool(labels) if labels is not None else None)
    text = payload.get("text") if isinstance(payload.get("text"), str) else None
    return EventInfo(event_id, post_id, text, payload.get("image_url") or "inline", labels, harmful)


def _pipelines(settings: WorkerSettings, opts: ReplayOptions) -> list[ModerationPipeline]:
    from consumer.worker.assemble import build_pipeline  # loads the bundle: only when a replay really runs

    bundles = [opts.bundle or settings.bundle_path] + ([opts.compare_bundle] if opts.compare_bundle else [])
    for b in bundles:
        if not Path(b).exists():
            raise ConfigError(f"Bundle {b} does not exist. Build one (`memeguard bundle`) or pass --bundle.")
    redis_url = settings.redis_url if opts.use_cache else ""
    return [build_pipeline(settings.model_copy(update={"bundle_path": Path(b), "redis_url": redis_url}))
            for b in bundles]


async def _thumbnail(pipeline: ModerationPipeline, raw: bytes) -> str | None:
    """A small JPEG of the meme, loaded with the worker's own fetcher and its safety policy."""
    try:
        data = await pipeline.fetcher.fetch(MemeEvent.model_validate_json(raw))
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            im.thumbnail((160, 160))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=70)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    except Exception:  # a thumbnail is a nicety; the listing stays without it
        return None


async def replay(settings: WorkerSettings, opts: ReplayOptions) -> dict[str, Any]:
    wait_for_broker(settings.kafka_bootstrap, min(settings.startup_timeout_s, 30.0))
    joined = read_label_file(opts.labels_file) if opts.labels_file else {}
    pipelines = await asyncio.to_thread(_pipelines, settings, opts)
    results = [ReplayResult(model=p.runtime.version, training_pool=load_training_pool(p.runtime.bundle.root),
                            expected=dict(p.runtime.manifest.expected), topic=opts.topic)
               for p in pipelines]
    metrics = PipelineMetrics("replay")
    server = None
    if opts.metrics_port:
        server = OpsServer(metrics, Health(), opts.metrics_port).start()
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    names = ["verdicts.jsonl"] if len(pipelines) == 1 else ["verdicts-a.jsonl", "verdicts-b.jsonl"]
    files = [(opts.out_dir / n).open("w", encoding="utf-8") for n in names]
    producer = (Producer(client_config(settings.kafka_bootstrap, {"acks": "all", "linger.ms": 20}))
                if opts.verdicts_topic else None)
    events: dict[str, EventInfo] = {}
    raw_by_id: dict[str, bytes] = {}
    snapshot = TopicSnapshot(settings.kafka_bootstrap, opts.topic, idle_timeout_s=opts.idle_timeout_s)
    bar = tqdm(desc=f"replay {opts.topic}", unit="meme", disable=not opts.progress, file=sys.stderr)
    batches = snapshot.batches(opts.batch_size)
    started = time.perf_counter()
    try:
        while (records := await asyncio.to_thread(next, batches, None)) is not None:
            for r in records:
                if (info := event_info(r, joined)) is not None:
                    events[info.event_id] = info
                    raw_by_id[info.event_id] = r.value if len(r.value) < 256 * 1024 else b""
            for k, (pipeline, result) in enumerate(zip(pipelines, results, strict=True)):
                outcomes = await pipeline.process(records)
                if k == 0:
                    metrics.observe_batch(outcomes)
                for o in outcomes:
                    if o.verdict is not None:
                        result.verdicts[o.verdict.event_id] = o.verdict
                        line = o.verdict.model_dump_json()
                        files[k].write(line + "\n")
                        if producer is not None:
                            producer.produce(opts.verdicts_topic, key=o.verdict.post_id.encode(), value=line.encode())
                            producer.poll(0)
                    elif o.dead_letter is not None:
                        result.dead_letters.append(o.dead_letter)
            if bar.total is None and snapshot.total is not None:
                bar.total = snapshot.total
            bar.update(len(records))
        wall = time.perf_counter() - started
        if producer is not None and producer.flush(30) > 0:
            raise ConfigError(f"Verdicts could not all be delivered to {opts.verdicts_topic}.")
    finally:
        bar.close()
        for f in files:
            f.close()
        if producer is not None:
            producer.close()
        if server is not None:
            server.stop()
    for r in results:
        r.wall_s = wall
    # Replay ends where the topic ended at start, so an event counted here always had its chance.
    labels = pipelines[0].runtime.manifest.labels
    reports = [build_report(r, events, labels) for r in results]
    comparison = None
    thumbs: dict[str, str] = {}
    if len(results) == 2:
        if pipelines[1].runtime.manifest.labels != labels:
            raise ConfigError("The two bundles have different label sets; they cannot be compared technique by technique.")
        disagreeing = disagreements(results[0], results[1])
        comparison = compare_reports(reports[0], reports[1], disagreeing)
        for d in disagreeing[:MAX_THUMBNAILS]:
            if raw_by_id.get(d["event_id"]) and (t := await _thumbnail(pipelines[0], raw_by_id[d["event_id"]])):
                thumbs[d["event_id"]] = t
    scores = [{"harmful": [(events[v.event_id].harmful, v.harmful_score) for v in r.verdicts.values()
                           if v.harmful_score is not None and events.get(v.event_id)
                           and events[v.event_id].harmful is not None],
               "latency": [(True, v.timings_ms["total"]) for v in r.verdicts.values() if "total" in v.timings_ms]}
              for r in results]
    for p in pipelines:
        await p.cache.close()
        await p.fetcher.close()
    document: dict[str, Any] = (reports[0] if comparison is None
                                else {"a": reports[0], "b": reports[1], "comparison": comparison})
    document["topic"] = opts.topic
    document["end_offsets"] = {str(p): end for p, end in sorted(snapshot.ends.items())}
    document["end_offsets_source"] = snapshot.end_source  # list_offsets, or high_watermark on Tansu
    (opts.out_dir / "report.json").write_text(json.dumps(document, indent=2, ensure_ascii=False))
    (opts.out_dir / "report.html").write_text(render(reports, scores, opts.topic, comparison, events, thumbs),
                                              encoding="utf-8")
    return document
