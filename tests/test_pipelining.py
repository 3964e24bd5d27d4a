"""Pipelined batches (issue 16, part 2): the next batch is prepared while the current one is in inference,
and still every record ends as exactly one output, published and committed in input order."""

import asyncio
import json
import time

import pytest
import redis
from confluent_kafka import Producer

from consumer.core.pipeline import RawRecord
from consumer.core.runtime import BundleRuntime
from tests.faults.audit import OutputReader
from tests.faults.records import POISON_KINDS, memes, poison, valid_event
from tests.inprocess import build_pipeline, write_image_root
from tests.kafka_helpers import committed_offsets

pytestmark = pytest.mark.integration


def records_of(events: list[bytes], topic: str = "in") -> list[RawRecord]:
    return [RawRecord(key=None, value=v, topic=topic, partition=0, offset=n) for n, v in enumerate(events)]


def test_a_prepared_batch_finishes_with_the_model_it_was_prepared_with(stack, tiny_bundle, tmp_path):
    """A hot reload between prepare and finish must not mix model versions within a batch: its cache
    lookups and stores, and its scores, are those of the runtime it was prepared with."""
    from exporters.testing import write_tiny_bundle

    redis.Redis.from_url(stack.redis_url).flushdb()
    root = write_image_root(tmp_path)
    pipe = build_pipeline(tiny_bundle, stack.redis_url, root)
    first = pipe.runtime
    other = BundleRuntime.load(write_tiny_bundle(tmp_path / "other", seed=1), providers="cpu", intra_op_threads=1)
    assert other.version != first.version
    image_url = (root / "meme.png").as_uri()
    values = [json.dumps({"event_id": f"e{n}", "post_id": f"p{n}", "image_url": image_url, "text": f"t{n}"}).encode()
              for n in range(3)]

    async def run() -> tuple[list, list]:
        prepared = await pipe.prepare(records_of(values))
        pipe.runtime = other  # as the worker's hot reload does, between batches
        pipelined = await pipe.finish(prepared)
        pipe.runtime = first
        redis.Redis.from_url(stack.redis_url).flushdb()
        return pipelined, await pipe.process(records_of(values))

    pipelined, sequential = asyncio.run(run())
    scores = [[t.score for t in o.verdict.techniques] for o in pipelined]
    assert scores == [[t.score for t in o.verdict.techniques] for o in sequential]  # the first model's scores
    assert all(not o.verdict.cached for o in pipelined)
    keys = {k.decode() for k in redis.Redis.from_url(stack.redis_url).keys("verdict:*")}
    assert keys and all(k.startswith(f"verdict:{first.version}:") for k in keys)


@pytest.mark.parametrize("engine", ["faust", "confluent"])
def test_pipelined_worker_publishes_and_commits_every_batch_once_and_in_order(stack, worker_factory, topics, engine):
    """Small batches (4) and three in flight: every record one output (poison included), each input
    partition's outputs produced in its offset order, and the offsets committed to the end."""
    worker = worker_factory(MEMEGUARD_MAX_BATCH="4", MEMEGUARD_PIPELINE_DEPTH="3", MEMEGUARD_WORKER_ENGINE=engine).start()
    pool = memes()
    values: list[tuple[str, bytes, bytes]] = []
    for n in range(60):
        event_id = f"{topics.group}-{n}"
        if n % 10 == 7:
            values.append((event_id, event_id.encode(), poison(event_id, POISON_KINDS[n % len(POISON_KINDS)])))
        else:  # every third repeats earlier content: hits and in-batch duplicates
            event = valid_event(event_id, pool[n % 20 if n % 3 else n])
            values.append((event_id, event.post_id.encode(), event.model_dump_json().encode()))
    origin: dict[str, tuple[int, int]] = {}
    producer = Producer({"bootstrap.servers": stack.bootstrap, "acks": "all"})
    for event_id, key, value in values:
        def delivered(err, msg, event_id=event_id) -> None:
            assert err is None, err
            origin[event_id] = (msg.partition(), msg.offset())
        producer.produce(topics.input, key=key, value=value, on_delivery=delivered)
    producer.flush(30)

    reader = OutputReader(stack.bootstrap, topics.output, topics.dlq)
    try:
        reader.wait_for(set(origin), timeout_s=120, settle_s=1.0, log=worker.log)
        outputs = reader.outputs
    finally:
        reader.close()
    per_id: dict[str, list] = {}
    for o in outputs:
        per_id.setdefault(o.event_id, []).append(o)
    assert set(per_id) == set(origin) and all(len(v) == 1 for v in per_id.values()), \
        sorted((k, len(v)) for k, v in per_id.items() if len(v) != 1)[:5]
    for partition in {p for p, _ in origin.values()}:
        in_order = sorted((off, eid) for eid, (p, off) in origin.items() if p == partition)
        stamps = [per_id[eid][0].timestamp_ms for _, eid in in_order]  # CreateTime: set when produced
        assert stamps == sorted(stamps), f"partition {partition}: outputs not produced in input order"
    expected = {p: max(off for q, off in origin.values() if q == p) + 1 for p, _ in origin.values()}
    deadline = time.monotonic() + 20
    while committed_offsets(stack.bootstrap, topics.group, topics.input) != expected:
        assert time.monotonic() < deadline, committed_offsets(stack.bootstrap, topics.group, topics.input)
        time.sleep(0.5)
    assert worker.stop() == 0, worker.log()
