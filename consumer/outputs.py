"""Read verdicts and dead letters back from the broker (for `tail`, the demo and the tests).

Uses assign() rather than a consumer group: reading output topics needs no group, and it avoids the
slow first join some brokers impose.
"""

import json
import time
from collections.abc import Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from consumer.kafka_config import client_config
from schemas import DeadLetter, Verdict


def _consumer(bootstrap: str, topics: list[str]) -> Consumer:
    consumer = Consumer(client_config(bootstrap, {"group.id": "memeguard-reader", "enable.auto.commit": False,
                                                  "auto.offset.reset": "earliest"}))
    metadata = consumer.list_topics(timeout=10)
    assignment = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics if t in metadata.topics
                  for p in metadata.topics[t].partitions]
    consumer.assign(assignment)
    return consumer


def read_outputs(bootstrap: str, verdict_topic: str, dlq_topic: str, idle_timeout_s: float = 5.0,
                 deadline_s: float = 120.0) -> Iterator[Verdict | DeadLetter]:
    """Yield every record of both topics from the beginning until nothing new arrives for idle_timeout_s."""
    consumer = _consumer(bootstrap, [verdict_topic, dlq_topic])
    try:
        last = time.monotonic()
        end = last + deadline_s
        while time.monotonic() < end and time.monotonic() - last < idle_timeout_s:
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
