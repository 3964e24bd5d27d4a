"""Read a whole topic, from the beginning to the end it had when the read started (assign(), no group)."""

import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from consumer.errors import ConfigError
from consumer.kafka.config import client_config


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


def read_topic(bootstrap: str, topic: str, timeout_s: float = 120.0,
               keep: Callable[[Record], bool] | None = None) -> list[Record]:
    """Every record up to the high watermarks seen at start (only those `keep` accepts), by (partition, offset).

    Stopping at the watermarks (not after idle polls) makes the result a function of what the topic held
    when the read began, so commands built on it are repeatable. A missing topic reads as empty.
    """
    consumer = Consumer(client_config(bootstrap, {"group.id": "memeguard-topic-reader",
                                                  "enable.auto.commit": False,
                                                  "fetch.message.max.bytes": 16 * 1024 * 1024}))
    try:
        meta = consumer.list_topics(timeout=10).topics
        if topic not in meta:
            return []
        ends: dict[int, int] = {}
        assignment = []
        for p in meta[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
                assignment.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        if not assignment:
            return []
        consumer.assign(assignment)
        out: list[Record] = []
        deadline = time.monotonic() + timeout_s
        remaining = set(ends)
        while remaining:
            if time.monotonic() > deadline:
                raise ConfigError(f"reading {topic} did not reach its end within {timeout_s:.0f}s "
                                  f"(partitions left: {sorted(remaining)})")
            for msg in consumer.consume(500, 0.5):
                if msg.error() is not None:
                    continue
                p, off = msg.partition(), msg.offset()
                if p in remaining and off < ends[p]:
                    record = Record(topic, p, off, msg.key(), msg.value(), msg.timestamp()[1])
                    if keep is None or keep(record):  # filtered while reading: input topics can be large
                        out.append(record)
                if off >= ends[p] - 1:
                    remaining.discard(p)
            # A transactional topic ends in a commit marker that is never delivered: the position says it is read.
            for tp in consumer.position([TopicPartition(topic, p) for p in remaining]):
                if tp.offset >= ends[tp.partition]:
                    remaining.discard(tp.partition)
        out.sort(key=lambda r: (r.partition, r.offset))
        return out
    finally:
        consumer.close()
