"""The Faust engine's guard against offset holes (consumer/worker/offset_holes.py), on the session's real broker:
what it reads back, what it leaves alone, and that an unreachable broker is an error, never an empty hole."""

import asyncio

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from faust.types import TP

from consumer.core.pipeline import RawRecord
from consumer.devinfra.stack import free_port
from consumer.kafka.topics import ensure_topics
from consumer.settings import WorkerSettings
from consumer.worker.faust_agent import ack_read_back, create_app
from consumer.worker.offset_holes import HoleGuard, HoleReader
from tests.kafka_helpers import produce_raw

pytestmark = pytest.mark.integration


@pytest.fixture
def ten(stack, topics) -> str:
    """One partition holding offsets 0-9, values b"v0".."v9"."""
    ensure_topics(stack.bootstrap, [topics.input], 1)
    produce_raw(stack.bootstrap, topics.input, [(None, f"v{i}".encode()) for i in range(10)])
    return topics.input


def commit(bootstrap: str, group: str, topic: str, offset: int) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        consumer.close()


def test_reads_exactly_the_records_of_the_hole(stack, topics, ten):
    reader = HoleReader(stack.bootstrap, topics.group)
    try:
        records = reader.read(ten, 0, 3, 7)
        assert [(r.offset, r.value) for r in records] == [(o, f"v{o}".encode()) for o in range(3, 7)]
        assert {(r.topic, r.partition) for r in records} == {(ten, 0)}
        assert [r.offset for r in reader.read(ten, 0, 8, 20)] == [8, 9]  # up to the end of the log, no wait
    finally:
        reader.close()


def test_resumes_where_the_group_committed_else_at_the_log_start(stack, topics, ten):
    reader = HoleReader(stack.bootstrap, topics.group)
    try:
        assert reader.committed(ten, 0) == 0  # nothing committed yet
        commit(stack.bootstrap, topics.group, ten, 6)
        assert reader.committed(ten, 0) == 6
    finally:
        reader.close()


def test_a_hole_of_transaction_markers_reads_back_empty(stack, topics):
    ensure_topics(stack.bootstrap, [topics.input], 1)
    producer = Producer({"bootstrap.servers": stack.bootstrap, "transactional.id": f"holes-{topics.input}"})
    producer.init_transactions(30)
    for value in (b"a", b"b"):  # each transaction: its record, then a commit marker at the next offset
        producer.begin_transaction()
        producer.produce(topics.input, value, partition=0)
        producer.commit_transaction(30)
    reader = HoleReader(stack.bootstrap, topics.group)
    try:
        assert reader.read(topics.input, 0, 1, 2) == []  # offset 1 is the first transaction's marker
        assert [(r.offset, r.value) for r in reader.read(topics.input, 0, 1, 4)] == [(2, b"b")]
    finally:
        reader.close()


def test_guard_reads_back_what_faust_skipped_within_and_across_generations(stack, topics, ten):
    def batch(*offsets: int) -> list[RawRecord]:
        return [RawRecord(key=None, value=b"", topic=ten, partition=0, offset=o) for o in offsets]

    reader = HoleReader(stack.bootstrap, topics.group)
    guard = HoleGuard(reader)
    try:
        run = asyncio.run
        assert run(guard.skipped_before(batch(0, 1), [1, 1])) == []  # starts at the log start: no hole
        skipped = run(guard.skipped_before(batch(4, 5), [1, 1]))  # 2 and 3 never handed over
        assert [r.offset for r in skipped] == [2, 3]
        assert run(guard.skipped_before(batch(3, 6), [1, 1])) == []  # a re-delivery is no hole
        # A rebalance: generation 2 resumes at the committed offset 5, and Faust hands over 8 first.
        commit(stack.bootstrap, topics.group, ten, 5)
        assert [r.offset for r in run(guard.skipped_before(batch(8, 9), [2, 2]))] == [5, 6, 7]
        assert guard.records_read_back == 5
    finally:
        reader.close()


def test_an_unreachable_broker_is_an_error_not_an_empty_hole(topics):
    reader = HoleReader(f"127.0.0.1:{free_port()}", topics.group, timeout_s=1.5)
    with pytest.raises(KafkaException):
        reader.committed(topics.input, 0)
    with pytest.raises(KafkaException):
        reader.read(topics.input, 0, 0, 5)


def test_a_record_read_back_is_acked_as_faust_acks_an_event_so_the_commit_passes_it():
    settings = WorkerSettings(kafka_bootstrap="127.0.0.1:9")
    app = create_app(settings, pipeline=None)  # type: ignore[arg-type]
    tp = TP(settings.input_topic, 0)

    async def acked_up_to() -> int | None:
        app.topics.acking_topics.add(settings.input_topic)  # as once the agent has subscribed
        app.consumer._committed_offset[tp] = 5  # Faust's own record of the group's commit
        for offset in (5, 6, 7):
            await ack_read_back(app, RawRecord(key=None, value=b"", topic=tp.topic, partition=0, offset=offset))
        return app.consumer._new_offset(tp)  # what Faust commits next

    assert asyncio.run(acked_up_to()) == 8


def test_guard_reads_back_a_tail_faust_skipped_once_it_stays_undelivered_for_two_checks(stack, topics, ten):
    reader = HoleReader(stack.bootstrap, topics.group)
    guard = HoleGuard(reader)
    partition = [(ten, 0)]
    try:
        run = asyncio.run
        assert run(guard.skipped_at_tail(partition, 1)) == []  # first sight of 0-9 undelivered: left to Faust
        assert [r.offset for r in run(guard.skipped_at_tail(partition, 1))] == list(range(10))  # still: read back
        assert run(guard.skipped_at_tail(partition, 1)) == []
        produce_raw(stack.bootstrap, ten, [(None, b"v10")])
        assert run(guard.skipped_at_tail(partition, 1)) == []  # just produced
        assert run(guard.skipped_before([RawRecord(None, b"v10", ten, 0, 10)], [1])) == []  # Faust delivered it
        assert run(guard.skipped_at_tail(partition, 1)) == []
        assert guard.records_read_back == 10
    finally:
        reader.close()


def test_a_hole_holding_a_tombstone_and_a_binary_key_reads_back_as_faust_would_hand_them(stack, topics):
    """What an adversary may write: a null value (dead-lettered as invalid_json downstream) and a key that is
    not text. They come back byte for byte, and the tombstone as a None value, not as b""."""
    ensure_topics(stack.bootstrap, [topics.input], 1)
    producer = Producer({"bootstrap.servers": stack.bootstrap})
    producer.produce(topics.input, value=b"before", partition=0)
    producer.produce(topics.input, key=b"\xff\x00\xfe", value=None, partition=0)
    producer.produce(topics.input, key=b"\x00" * 3, value=b"\x80\x81not json", partition=0)
    assert producer.flush(30) == 0
    reader = HoleReader(stack.bootstrap, topics.group)
    try:
        records = reader.read(topics.input, 0, 1, 3)
        assert [(r.offset, r.key, r.value) for r in records] == [(1, b"\xff\x00\xfe", None),
                                                                  (2, b"\x00\x00\x00", b"\x80\x81not json")]
    finally:
        reader.close()
