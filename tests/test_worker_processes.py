"""`memeguard worker --processes N` (issue 16, part 3): N consumer-group members from one command."""

import signal
import time

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from tests.faults.audit import OutputReader
from tests.faults.records import memes, valid_event

pytestmark = pytest.mark.integration


def members_with_partitions(bootstrap: str, group: str) -> list[set[int]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group])[group].result(15)
    return [{tp.partition for tp in m.assignment.topic_partitions} for m in description.members]


def test_two_processes_share_the_partitions_and_every_event_gets_one_verdict(stack, worker_factory, topics):
    worker = worker_factory()
    worker.argv = ["-m", "consumer.cli", "worker", "--processes", "2"]
    worker.start(timeout_s=120)  # the ready file appears once both members consume

    deadline = time.monotonic() + 30  # the second member may join after the first took both partitions
    while sorted(map(sorted, members_with_partitions(stack.bootstrap, topics.group))) != [[0], [1]]:
        assert time.monotonic() < deadline, members_with_partitions(stack.bootstrap, topics.group)
        time.sleep(0.5)

    pool = memes()
    ids = set()
    producer = Producer({"bootstrap.servers": stack.bootstrap, "acks": "all"})
    for n in range(40):
        event = valid_event(f"{topics.group}-{n}", pool[n])
        ids.add(event.event_id)
        producer.produce(topics.input, key=event.post_id.encode(), value=event.model_dump_json().encode())
    producer.flush(30)
    reader = OutputReader(stack.bootstrap, topics.output, topics.dlq)
    try:
        reader.wait_for(ids, timeout_s=120, settle_s=1.0, log=worker.log)
        assert sorted(o.event_id for o in reader.outputs) == sorted(ids)  # one verdict each, none twice
        assert {o.out.__class__.__name__ for o in reader.outputs} == {"Verdict"}
    finally:
        reader.close()

    assert worker.stop(sig=signal.SIGTERM, timeout_s=60) == 0, worker.log()
    assert members_with_partitions(stack.bootstrap, topics.group) == []  # both members left the group
