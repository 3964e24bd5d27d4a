"""Fault injection on what the worker depends on: Redis killed or slow, an image source that hangs."""

import signal
from pathlib import Path

import pytest

from schemas import ErrorKind, MemeEvent, Verdict
from tests.faults.audit import OutputReader, audit, report
from tests.faults.proxy import TcpProxy
from tests.faults.records import memes, mixed
from tests.faults.stall_server import StallServer
from tests.faults.workers import fault_worker
from tests.kafka_helpers import produce_raw

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def test_redis_killed_and_restarted_mid_run(stack, worker_factory, topics, tmp_path: Path):
    records = mixed(1500, "redis-kill", dup_frac=0.4, seed=9)
    worker = fault_worker(worker_factory, tmp_path).start()
    reader = OutputReader(stack.bootstrap, topics.output, topics.dlq)
    # Most records are produced after the kill: a fast worker must not have finished them all before it.
    produce_raw(stack.bootstrap, topics.input, records.records[:300])
    try:
        reader.poll(3.0)
        seen_at_kill = len(reader.seen())
        stack.redis.stop(sig=signal.SIGKILL)
        produce_raw(stack.bootstrap, topics.input, records.records[300:])
        reader.poll(4.0)
        seen_during = len(reader.seen()) - seen_at_kill
    finally:
        stack.redis.start()
    reader.wait_for(records.ids, timeout_s=180, log=worker.log)
    counts = audit("redis_killed_and_restarted", records, reader.outputs, allow_duplicates=False)
    cached = sum(isinstance(o.out, Verdict) and o.out.cached for o in reader.outputs)
    counts.extra = {"outputs_while_redis_down": seen_during, "cached_verdicts": cached}
    report(counts)
    reader.close()
    assert seen_during > 0, "the stream stopped while Redis was down"
    assert "serving without cache" in worker.log_path.read_text()
    assert worker.stop() == 0, worker.log()


def test_redis_slow_behind_proxy_never_holds_the_stream(stack, worker_factory, topics, tmp_path: Path):
    proxy = TcpProxy(stack.redis.port).start()
    timeout_s = 0.25
    worker = fault_worker(worker_factory, tmp_path, MEMEGUARD_REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0",
                          MEMEGUARD_REDIS_TIMEOUT_S=str(timeout_s)).start()
    reader = OutputReader(stack.bootstrap, topics.output, topics.dlq)
    records = mixed(1500, "redis-slow", dup_frac=0.4, seed=10)
    try:
        produce_raw(stack.bootstrap, topics.input, records.records[:300])  # the rest once Redis is slow
        reader.poll(2.0)
        slow_from = len(reader.outputs)
        proxy.delay_s = 2.0  # every Redis request and reply now waits 8x the worker's per-call timeout
        produce_raw(stack.bootstrap, topics.input, records.records[300:])
        reader.poll(6.0)
        slow_to = len(reader.outputs)
        proxy.delay_s = 0.0
        reader.wait_for(records.ids, timeout_s=180, log=worker.log)
    finally:
        proxy.stop()
    counts = audit("redis_slow_proxy", records, reader.outputs, allow_duplicates=False)
    slow = [o.out for o in reader.outputs[slow_from:slow_to] if isinstance(o.out, Verdict)]
    # Bounded: a batch never waited for Redis's answer (2 s away); it gave up after the per-call timeout.
    waited_ms = max(v.timings_ms.get("cache_get", 0) + v.timings_ms.get("cache_put", 0) for v in slow)
    counts.extra = {"outputs_while_slow": len(slow), "max_cache_ms_while_slow": waited_ms,
                    "proxy_delay_ms": 2000, "redis_timeout_ms": timeout_s * 1000}
    report(counts)
    reader.close()
    assert slow, "no verdicts while Redis was slow"
    assert waited_ms < 2000, waited_ms
    assert "serving without cache" in worker.log_path.read_text()
    assert worker.stop() == 0, worker.log()


def test_hanging_image_source_is_bounded_by_the_fetch_timeout(stack, worker_factory, topics, tmp_path: Path):
    pool = memes()
    server = StallServer(pool[0].image_path.read_bytes()).start()
    fetch_timeout_s = 1.0
    records = mixed(600, "hang", seed=11)
    for i in range(60):  # stalled headers and a byte-by-byte trickle, which per-read timeouts alone never stop
        kind = "stall" if i % 2 else "trickle"
        event = MemeEvent(event_id=f"hang-{kind}-{i}", post_id=f"p{i}", image_url=server.url(f"{kind}/{i}.png"))
        records.add(event.event_id, event.post_id.encode(), event.model_dump_json().encode(),
                    ErrorKind.FETCH_FAILED.value)
    for i in range(20):  # the same server answering normally: a slow source must not poison good requests
        event = MemeEvent(event_id=f"hang-ok-{i}", post_id=f"ok{i}", image_url=server.url(f"ok.png?{i}"))
        records.add(event.event_id, event.post_id.encode(), event.model_dump_json().encode(), "verdict")
        records.content[event.event_id] = ("server-ok", "")
    records.shuffle(seed=11)
    worker = fault_worker(worker_factory, tmp_path, MEMEGUARD_FETCH_TIMEOUT_S=str(fetch_timeout_s)).start()
    reader = OutputReader(stack.bootstrap, topics.output, topics.dlq)
    try:
        produce_raw(stack.bootstrap, topics.input, records.records)
        reader.wait_for(records.ids, timeout_s=180, log=worker.log)
    finally:
        server.stop()
    counts = audit("image_source_hanging", records, reader.outputs, allow_duplicates=False)
    verdicts = [o.out for o in reader.outputs if isinstance(o.out, Verdict)]
    # The batch's fetch stage is bounded by the timeout (plus scheduling slack on shared cores), so the
    # valid memes batched with a hanging one were held at most that long.
    worst_fetch_ms = max(v.timings_ms["fetch"] for v in verdicts)
    counts.extra = {"hanging_sources": 60, "fetch_timeout_ms": fetch_timeout_s * 1000,
                    "worst_batch_fetch_ms": worst_fetch_ms, "server_hits": dict(server.hits)}
    report(counts)
    reader.close()
    assert server.hits["stall"] == 30 and server.hits["trickle"] == 30
    assert worst_fetch_ms < 3 * fetch_timeout_s * 1000, worst_fetch_ms
    assert worker.stop() == 0, worker.log()
