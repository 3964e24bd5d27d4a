"""Metrics and health endpoints, scraped from a real worker process on a real broker and redis."""

import json
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from consumer.devinfra.stack import free_port
from consumer.ops.metrics import PipelineMetrics
from consumer.ops.server import Health, OpsServer, broker_probe, redis_probe
from tests.kafka_helpers import produce_events, produce_raw, wait_outputs
from tests.memes import dev_events

pytestmark = pytest.mark.integration


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_worker_exposes_metrics_health_and_readiness(stack, worker_factory, topics):
    port = free_port()
    worker = worker_factory(MEMEGUARD_METRICS_PORT=str(port)).start()
    events = dev_events(12)
    produce_events(stack.bootstrap, topics.input, events)
    produce_raw(stack.bootstrap, topics.input, [(b"junk", b"{not json")])
    wait_outputs(stack.bootstrap, topics, {e.event_id for e in events})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:  # the worker counts a batch once the broker acknowledged it, just after the verdicts appear
        found = samples(httpx.get(f"{base}/metrics").text)
        if value(found, "memeguard_events_in_total") >= 13 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert value(found, "memeguard_events_in_total") == 13, worker.log()
    assert sum(v for (n, _), v in found.items() if n == "memeguard_verdicts_out_total") == 12
    assert value(found, "memeguard_dead_letters_total", kind="invalid_json") == 1
    assert value(found, "memeguard_cache_ops_total", result="misses") >= 1
    assert value(found, "memeguard_batch_size_count") >= 1
    assert value(found, "memeguard_stage_seconds_count", stage="infer") >= 1
    assert value(found, "memeguard_stage_seconds_count", stage="publish") >= 1
    assert value(found, "memeguard_end_to_end_seconds_count") == 12
    info = [labels for (n, labels), _ in found.items() if n == "memeguard_model_info"]
    assert info and dict(info[0])["name"] == "memeguard-tiny" and dict(info[0])["provider"] == "CPUExecutionProvider"
    assert any(n == "memeguard_consumer_lag" for n, _ in found)  # Faust's fetch high watermarks

    assert httpx.get(f"{base}/healthz").status_code == 200
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "checks": {"bundle": "loaded", "broker": "reachable",
                                                           "redis": "reachable"}}
    assert httpx.get(f"{base}/nope").status_code == 404
    assert worker.stop() == 0


def test_readiness_states_degraded_redis_and_fails_without_broker(stack):
    closed = free_port()
    metrics = PipelineMetrics("test")
    health = Health(broker=broker_probe(stack.bootstrap), redis=redis_probe(f"redis://127.0.0.1:{closed}/0"),
                    metrics=metrics)
    server = OpsServer(metrics, health, 0, host="127.0.0.1").start()
    try:
        r = httpx.get(f"http://127.0.0.1:{server.port}/readyz")
        body = r.json()
        assert r.status_code == 200 and body["status"] == "degraded"
        assert body["checks"]["redis"].startswith("degraded: redis unreachable")
        health.broker = broker_probe(f"127.0.0.1:{closed}", timeout_s=0.5)
        r = httpx.get(f"http://127.0.0.1:{server.port}/readyz", timeout=10)
        assert r.status_code == 503 and "unreachable" in json.loads(r.text)["checks"]["broker"]
        found = samples(httpx.get(f"http://127.0.0.1:{server.port}/metrics").text)
        assert value(found, "memeguard_redis_up") == 0 and value(found, "memeguard_broker_up") == 0
        starting = httpx.get(f"http://127.0.0.1:{server.port}/healthz")
        assert starting.status_code == 200 and starting.json()["status"] == "starting"  # no loop yet: not a hang
        health.heartbeat()
        health.stale_after_s = 0.0  # a stale heartbeat (blocked loop) fails liveness
        assert httpx.get(f"http://127.0.0.1:{server.port}/healthz").status_code == 503
    finally:
        server.stop()
