"""`memeguard shadow`: a candidate bundle on a deterministic sample of live traffic, with no effect on decisions.

It is a separate consumer of the input topic with its own group (the production worker's offsets and
assignments are untouched), runs the worker's own pipeline (`consumer.worker.assemble.build_pipeline`: same fetcher,
cache, policy and enrichment) with the bundle swapped for the candidate, and publishes its verdicts to a shadow
topic that nothing enforces. Dead letters are counted, never published: the production worker owns the DLQ.

Sampling is decided before any image is fetched, on the event's image reference and normalised text, so an
unsampled meme costs nothing and every repost of the same reference is in or out together, run after run.
"""

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer

from consumer.core.hashing import normalise_text
from consumer.core.pipeline import ModerationPipeline, RawRecord
from consumer.kafka.config import client_config
from consumer.kafka.topics import ensure_topics
from consumer.settings import WorkerSettings

log = logging.getLogger(__name__)

SHADOW_TOPIC = "memes.shadow"


def sample_key(value: bytes | None) -> bytes | None:
    """What the sample is drawn on: image reference + normalised text; None for records that are not events."""
    try:
        payload = json.loads(value or b"")
    except (ValueError, RecursionError):
        return None
    if not isinstance(payload, dict):
        return None
    ref = payload.get("image_url") or payload.get("image_b64")
    text = payload.get("text") if isinstance(payload.get("text"), str) else ""
    if not isinstance(ref, str):
        return None
    return hashlib.sha256(ref.encode("utf-8", "replace")).digest() + normalise_text(text).encode("utf-8", "replace")


def in_sample(value: bytes | None, rate: float) -> bool:
    """Deterministic: the first 8 bytes of sha256(key) as a fraction of 2**64, below `rate`."""
    if rate >= 1.0:
        return True
    key = sample_key(value)
    if key is None or rate <= 0.0:
        return False
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64 < rate


@dataclass
class ShadowStats:
    read: int = 0
    sampled: int = 0
    verdicts: int = 0
    dead_letters: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class ShadowOptions:
    bundle: Path
    sample: float = 0.1
    shadow_topic: str = SHADOW_TOPIC
    group_id: str = "memeguard-shadow"
    batch_size: int = 32
    idle_exit_s: float | None = None  # stop after this long without records (scripts, tests); None: run on
    max_records: int | None = None


def build_shadow_pipeline(settings: WorkerSettings, bundle: Path) -> ModerationPipeline:
    from consumer.worker.assemble import build_pipeline  # loads the bundle: only when a shadow really runs

    # The cache key includes the model version, so sharing the production Redis mixes no verdicts.
    return build_pipeline(settings.model_copy(update={"bundle_path": Path(bundle)}))


def run_shadow(settings: WorkerSettings, opts: ShadowOptions, pipeline: ModerationPipeline | None = None,
               stop: threading.Event | None = None) -> ShadowStats:
    """Blocks until `stop` is set, `idle_exit_s` passes without records or `max_records` were read."""
    pipeline = pipeline or build_shadow_pipeline(settings, opts.bundle)
    ensure_topics(settings.kafka_bootstrap, [opts.shadow_topic], settings.topic_partitions,
                  settings.topic_replication_factor)
    return asyncio.run(_shadow_loop(settings, opts, pipeline, stop or threading.Event()))


async def _shadow_loop(settings: WorkerSettings, opts: ShadowOptions, pipeline: ModerationPipeline,
                       stop: threading.Event) -> ShadowStats:
    consumer = Consumer(client_config(settings.kafka_bootstrap, {
        "group.id": opts.group_id, "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "fetch.message.max.bytes": 16 * 1024 * 1024}))
    producer = Producer(client_config(settings.kafka_bootstrap, {"acks": "all", "linger.ms": 5}))
    consumer.subscribe([settings.input_topic])
    stats = ShadowStats()
    last_record = time.monotonic()
    log.info("shadow: %s on %.1f%% of %s -> %s", pipeline.runtime.version, opts.sample * 100, settings.input_topic,
             opts.shadow_topic)
    try:
        while not stop.is_set():
            messages = [m for m in await asyncio.to_thread(consumer.consume, opts.batch_size, 0.5)
                        if m.error() is None]
            if not messages:
                if opts.idle_exit_s is not None and time.monotonic() - last_record > opts.idle_exit_s:
                    break
                continue
            last_record = time.monotonic()
            stats.read += len(messages)
            records = [RawRecord(m.key(), m.value(), m.topic(), m.partition(), m.offset())
                       for m in messages if in_sample(m.value(), opts.sample)]
            stats.sampled += len(records)
            for outcome in await pipeline.process(records) if records else []:
                if outcome.verdict is not None:
                    v = outcome.verdict
                    producer.produce(opts.shadow_topic, key=v.post_id.encode(), value=v.model_dump_json().encode())
                    stats.verdicts += 1
                elif outcome.dead_letter is not None:
                    stats.dead_letters[outcome.dead_letter.error_kind.value] += 1
            if await asyncio.to_thread(producer.flush, 30) > 0:
                raise KafkaException(f"shadow verdicts not acknowledged by {settings.kafka_bootstrap}")
            consumer.commit(asynchronous=False)  # after the shadow verdicts are acknowledged: at least once
            if opts.max_records is not None and stats.read >= opts.max_records:
                break
    finally:
        consumer.close()
    log.info("shadow stopped: %s", stats)
    return stats
