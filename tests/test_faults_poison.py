"""Fault injection through the input itself: a poison flood, and outputs the broker path refuses."""

import time
from pathlib import Path

import pytest

from schemas import DeadLetter, ErrorKind, MemeEvent
from tests.faults.audit import OutputReader, audit, report
from tests.faults.records import memes, mixed
from tests.faults.workers import fault_worker
from tests.kafka_helpers import committed_offsets, produce_raw

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def test_poison_flood_half_invalid_all_dead_lettered_valid_unaffected(stack, worker_factory, topics, tmp_path: Path):
    records = mixed(2000, "flood", dup_frac=0.2, poison_frac=0.5, seed=6)
    worker = fault_worker(worker_factory, tmp_path).start()
    reader = OutputReader(stack.bootstrap, topics.output, topics.dlq)
    produce_raw(stack.bootstrap, topics.input, records.records)
    reader.wait_for(records.ids, timeout_s=180, log=worker.log)
    # audit(): each poison record is a dead letter of its kind, carrying its exact bytes and origin;
    # each valid one a verdict, identical for identical content.
    counts = audit("poison_flood_50pct", records, reader.outputs, allow_duplicates=False)
    kinds: dict[str, int] = {}
    for o in reader.outputs:
        if isinstance(o.out, DeadLetter):
            kinds[o.out.error_kind.value] = kinds.get(o.out.error_kind.value, 0) + 1
    counts.extra = {"dead_letters_by_kind": kinds}
    report(counts)
    reader.close()
    assert worker.stop() == 0, worker.log()  # never crashed, never restarted


MAX_EVENT_BYTES = 2048  # the worker's producer refuses records over 2 x this (consumer/worker/producer_config.py)


@pytest.mark.parametrize("engine", ["faust", "confluent"])  # both at-least-once engines refuse the same records
def test_verdict_too_large_to_publish_is_dead_lettered_and_partition_moves_on(stack, worker_factory, topics,
                                                                              tmp_path: Path, engine):
    """Tansu ignores topic `max.message.bytes`, so the refusal comes from the producer's request-size limit.

    An author id of 1,700 characters keeps the event under MAX_EVENT_BYTES but makes its verdict (which
    repeats it beside ~3 kB of scores) larger than the producer accepts.
    """
    records = mixed(1000, "pubfail", seed=7)
    pool = memes()
    for i in range(100):
        event_id = f"pubfail-big-{i}"
        event = MemeEvent(event_id=event_id, post_id=f"post-{event_id}", author_id="a" * 1700,
                          image_url=pool[i].image_path.resolve().as_uri())
        value = event.model_dump_json().encode()
        assert len(value) <= MAX_EVENT_BYTES
        records.add(event_id, event.post_id.encode(), value, ErrorKind.PUBLISH_FAILED.value)
    records.shuffle(seed=7)
    worker = fault_worker(worker_factory, tmp_path, MEMEGUARD_MAX_EVENT_BYTES=str(MAX_EVENT_BYTES),
                          MEMEGUARD_WORKER_ENGINE=engine).start()
    reader = OutputReader(stack.bootstrap, topics.output, topics.dlq)
    last = produce_raw(stack.bootstrap, topics.input, records.records)
    reader.wait_for(records.ids, timeout_s=180, log=worker.log)
    counts = audit("verdict_too_large_to_publish", records, reader.outputs, allow_duplicates=False)
    counts.extra = {"publish_failed": 100}
    report(counts)
    reader.close()
    assert "dead-lettering it" in worker.log_path.read_text()
    # Not a stuck partition: every input offset was committed past the refused verdicts.
    expected = {p: o + 1 for p, o in last.items()}
    deadline = time.monotonic() + 30  # offsets are committed on Faust's commit interval
    while committed_offsets(stack.bootstrap, topics.group, topics.input) != expected:
        assert time.monotonic() < deadline, committed_offsets(stack.bootstrap, topics.group, topics.input)
        time.sleep(0.5)
    assert worker.stop() == 0, worker.log()


def test_records_past_the_consumer_prefetch_cap_end_as_dead_letters_and_the_stream_goes_on(
        stack, worker_factory, topics, tmp_path: Path):
    """The default loop caps librdkafka's prefetch at 16 MiB (consumer/worker/loop.py). Records of
    16,000,000 bytes, near the broker's 16 MiB limit and over the 15 MiB MAX_EVENT_BYTES default, two of them
    back to back (past the cap together), between valid events: each is one `oversized` dead letter and the
    events around it are verdicts; the worker never exits."""
    records = mixed(120, "prefetch", dup_frac=0.2, poison_frac=0.0, seed=11)
    filler = b"x" * 16_000_000
    for position, n in ((30, 0), (31, 1), (90, 2)):
        event_id = f"prefetch-big-{n}"
        value = b'{"event_id": "' + event_id.encode() + b'", "post_id": "p", "text": "' + filler + b'"}'
        records.records.insert(position, (event_id.encode(), value))
        records.expected[event_id] = ErrorKind.OVERSIZED.value
    worker = fault_worker(worker_factory, tmp_path).start()
    reader = OutputReader(stack.bootstrap, topics.output, topics.dlq)
    produce_raw(stack.bootstrap, topics.input, records.records)
    reader.wait_for(records.ids, timeout_s=180, log=worker.log)
    counts = audit("records_past_the_prefetch_cap", records, reader.outputs, allow_duplicates=False)
    report(counts)
    reader.close()
    assert counts.dead_letters == 3
    assert worker.stop() == 0, worker.log()
