"""Read verdicts and dead letters back from the broker (for `tail`, the demo and the tests).

Uses assign() rather than a consumer group: reading output topics needs no group, and it avoids the
slow first join some brokers impose.
"""

import json
import time
from collections.abc import Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from consumer.kafka.config import client_config
from schemas import DeadLetter, Verdict


def _consumer(bootstrap: str, topics: list[str], from_end: bool = False) -> Consumer:
    consumer = Consumer(client_config(bootstrap, {"group.id": "memeguard-reader", "enable.auto.commit": False,
                                                  "auto.offset.reset": "earliest"}))
    metadata = consumer.list_topics(timeout=10)

    def start(topic: str, partition: int) -> int:
        if not from_end:
            return OFFSET_BEGINNING
        # The end as of now, resolved here: a record published once this returns is read (OFFSET_END would
        # only be resolved at the first fetch, and could skip the records published before it).
        return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]

    assignment = [TopicPartition(t, p, start(t, p)) for t in topics if t in metadata.topics
                  for p in metadata.topics[t].partitions]
    consumer.assign(assignment)
    return consumer


def read_outputs(bootstrap: str, verdict_topic: str, dlq_topic: str, idle_timeout_s: float | None = 5.0,
                 deadline_s: float = 120.0, from_end: bool = False) -> Iterator[Verdict | DeadLetter]:
    """Yield the records of both topics from the beginning (or, `from_end`, only those published from now on)
    until nothing new arrives for idle_timeout_s (None: keep waiting until the deadline)."""
    consumer = _consumer(bootstrap, [verdict_topic, dlq_topic], from_end)
    try:
        last = time.monotonic()
        end = last + deadline_s
        while time.monotonic() < end and (idle_timeout_s is None or time.monotonic() - last < idle_timeout_s):
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            last = time.monotonic()
            model = Verdict if msg.topic() == verdict_topic else DeadLetter
            yield model.model_validate(json.loads(msg.value()))
    finally:
        consumer.close()


def collect(bootstrap: str, verdict_topic: str, dlq_topic: str, event_ids: set[str],
            timeout_s: float = 120.0) -> Iterator[Verdict | DeadLetter]:
    """Yield outputs whose event id is in `event_ids` until each has been seen at least once."""
    consumer = _consumer(bootstrap, [verdict_topic, dlq_topic])
    missing = set(event_ids)
    try:
        end = time.monotonic() + timeout_s
        while missing and time.monotonic() < end:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            model = Verdict if msg.topic() == verdict_topic else DeadLetter
            out = model.model_validate(json.loads(msg.value()))
            if out.event_id in event_ids:
                missing.discard(out.event_id)
                yield out
    finally:
        consumer.close()
