"""Small real-broker helpers for the tests: produce raw bytes, audit outputs, read committed offsets."""

import json
import time
from collections import Counter

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from consumer.kafka.outputs import read_outputs
from consumer.kafka.topics import ensure_topics
from schemas import DeadLetter, MemeEvent, Verdict


def produce_raw(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> dict[int, int]:
    """Returns the highest acknowledged offset per partition."""
    ensure_topics(bootstrap, [topic], 2)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "message.max.bytes": 16 * 1024 * 1024})
    last: dict[int, int] = {}
    failures: list[str] = []

    def report(err, msg) -> None:
        if err:
            failures.append(str(err))
        else:
            last[msg.partition()] = max(last.get(msg.partition(), -1), msg.offset())

    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=report)
        producer.poll(0)
    producer.flush(30)
    assert not failures, failures
    return last


def produce_events(bootstrap: str, topic: str, events: list[MemeEvent]) -> dict[int, int]:
    return produce_raw(bootstrap, topic, [(e.post_id.encode(), e.model_dump_json().encode()) for e in events])


def wait_outputs(bootstrap: str, topics, expected_ids: set[str], timeout_s: float = 90.0,
                 settle_s: float = 1.0) -> list[Verdict | DeadLetter]:
    """All outputs (with duplicates) once every expected id has appeared, plus `settle_s` for stragglers."""
    deadline = time.monotonic() + timeout_s
    while True:
        outs = list(read_outputs(bootstrap, topics.output, topics.dlq, idle_timeout_s=settle_s, deadline_s=30))
        seen = {o.event_id for o in outs}
        if expected_ids <= seen or time.monotonic() > deadline:
            return outs
        time.sleep(0.5)


def audit(outputs: list[Verdict | DeadLetter], expected_ids: set[str]) -> Counter:
    """Every expected id at least once; nothing unexpected. Returns how often each id appeared."""
    counts = Counter(o.event_id for o in outputs)
    missing = expected_ids - set(counts)
    unexpected = set(counts) - expected_ids
    assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:5]}"
    assert not unexpected, f"outputs for ids never sent: {sorted(unexpected)[:5]}"
    return counts


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int = 2) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


def decode(outputs) -> list[dict]:
    return [json.loads(o.model_dump_json()) for o in outputs]


def read_json_topic(bootstrap: str, topic: str, idle_polls: int = 4) -> list[dict]:
    """Every record of `topic` from the beginning, as JSON, until `idle_polls` polls of 0.25 s bring nothing."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    out, idle = [], 0
    while idle < idle_polls:
        m = c.poll(0.25)
        if m is None or m.error():
            idle += 1
            continue
        idle = 0
        out.append(json.loads(m.value()))
    c.close()
    return out
