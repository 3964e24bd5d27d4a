"""Read verdicts and dead letters back from the broker (for `tail`, the demo and the tests).

Uses assign() rather than a consumer group: reading output topics needs no group, and it avoids the
slow first join some brokers impose.
"""

import json
import time
from collections.abc import Callable, Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from consumer.kafka.config import client_config
from consumer.kafka.topic_reader import Record
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


def decode_output(value: bytes | None, kind: str | None = None) -> "Verdict | DeadLetter | object":
    """A record value as a Verdict (`kind` "verdict"), a DeadLetter ("dead_letter") or, for any other topic or
    a value that does not parse as one, its JSON (or its text)."""
    if value is None:
        return None
    model = {"verdict": Verdict, "dead_letter": DeadLetter}.get(kind or "")
    if model is not None:
        try:
            return model.model_validate_json(value)
        except ValueError:
            pass
    try:
        return json.loads(value)
    except ValueError:
        return value.decode("utf-8", "replace")


def read_records(bootstrap: str, topics: list[str], last: int | None = None, follow: bool = False,
                 deadline_s: float = 3600.0,
                 on_ready: Callable[[list[str], list[str]], None] | None = None) -> Iterator[Record]:
    """The records of `topics` (`memeguard tail`).

    Not following: everything up to the end each partition had when the read began, in timestamp order, or
    with `last` only the newest `last` records (each partition is read from `last` before its end: the newest
    N overall are among them). Following: only records published after the read began, as they come, until
    the deadline. `on_ready(present, missing)` is called once the partitions are assigned."""
    consumer = Consumer(client_config(bootstrap, {"group.id": "memeguard-reader", "enable.auto.commit": False,
                                                  "fetch.message.max.bytes": 16 * 1024 * 1024}))
    try:
        metadata = consumer.list_topics(timeout=10).topics
        present = [t for t in topics if t in metadata]
        assignment, ends = [], {}
        for topic in present:
            for p in metadata[topic].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                start = high if follow else max(low, high - last) if last else low
                if follow or high > start:
                    assignment.append(TopicPartition(topic, p, start))
                    ends[(topic, p)] = high
        consumer.assign(assignment)
        if on_ready is not None:
            on_ready(present, [t for t in topics if t not in metadata])
        end = time.monotonic() + deadline_s
        if follow:
            while time.monotonic() < end:
                msg = consumer.poll(0.2)
                if msg is not None and not msg.error():
                    yield Record(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                                 msg.timestamp()[1])
            return
        got: list[Record] = []
        remaining = set(ends)
        while remaining and time.monotonic() < end:
            for msg in consumer.consume(500, 0.5):
                if msg.error() is not None:
                    continue
                where = (msg.topic(), msg.partition())
                if where in remaining and msg.offset() < ends[where]:
                    record = Record(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                                    msg.timestamp()[1])
                    if last:
                        got.append(record)
                    else:
                        yield record  # everything: as it is read, nothing kept
                if msg.offset() >= ends[where] - 1:
                    remaining.discard(where)
            # A transactional topic ends in a commit marker that is never delivered: the position says it is read.
            for tp in consumer.position([TopicPartition(t, p) for t, p in remaining]):
                if tp.offset >= ends[(tp.topic, tp.partition)]:
                    remaining.discard((tp.topic, tp.partition))
        got.sort(key=lambda r: (r.timestamp_ms, r.topic, r.partition, r.offset))
        yield from got[-last:]
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
