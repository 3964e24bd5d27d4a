"""Kafka TLS/SASL and Redis AUTH/TLS settings reach the clients that use them.

Here the Kafka side is shown where librdkafka and Faust take the settings (librdkafka validates security
properties when a client is created; the Faust app carries them as its broker credentials); the end-to-end
runs against a real SASL/SCRAM and mutual-TLS Apache Kafka are in tests/test_kafka_security.py. Redis AUTH
is shown against a real password-protected redis-server.
"""

import asyncio
import subprocess
import time
from pathlib import Path

import certifi
import faust
import pytest
from confluent_kafka import KafkaException, Producer
from pydantic import ValidationError

from consumer.core.cache import VerdictCache
from consumer.devinfra.stack import free_port, port_open, redis_binary
from consumer.kafka.config import KafkaSecurity, client_config
from consumer.settings import WorkerSettings
from consumer.worker.faust_agent import create_app
from schemas import TECHNIQUES, Decision, ModelInfo, TechniqueScore, Verdict

CONSUMER = Path(__file__).resolve().parents[1] / "consumer"


def verdict_like(event_id: str) -> Verdict:
    techniques = [TechniqueScore(technique=t, score=0.1, threshold=0.5, flagged=False) for t in TECHNIQUES]
    return Verdict(event_id=event_id, post_id="p", content_hash="c" * 64, model=ModelInfo(name="m", version="1"),
                   techniques=techniques, decision=Decision.ALLOW)


def set_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(f"MEMEGUARD_KAFKA_{name.upper()}", value)


def test_plaintext_adds_nothing(monkeypatch):
    monkeypatch.delenv("MEMEGUARD_KAFKA_SECURITY_PROTOCOL", raising=False)
    monkeypatch.setenv("MEMEGUARD_KAFKA_CLIENT_LOGS", "true")  # else librdkafka's own log is quieted (log_level 2)
    assert client_config("h:9092", {"acks": "all"}) == {"bootstrap.servers": "h:9092", "acks": "all"}
    assert KafkaSecurity().faust_credentials() is None


def test_sasl_ssl_settings_become_librdkafka_properties(monkeypatch):
    set_env(monkeypatch, security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="svc",
            sasl_password="s3cret", ssl_cafile=certifi.where(), client_logs="true")
    assert client_config("broker:9093", {"acks": "all"}) == {
        "bootstrap.servers": "broker:9093", "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc", "sasl.password": "s3cret", "ssl.ca.location": certifi.where(), "acks": "all"}
    assert "s3cret" not in repr(KafkaSecurity())  # the password never lands in a log line through repr


def test_librdkafka_receives_them(monkeypatch, tmp_path):
    set_env(monkeypatch, security_protocol="SSL", ssl_cafile=str(tmp_path / "missing-ca.pem"))
    with pytest.raises(KafkaException, match="ssl.ca.location"):
        Producer(client_config("127.0.0.1:9"))
    set_env(monkeypatch, security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256",
            sasl_username="svc", sasl_password="pw")
    Producer(client_config("127.0.0.1:9", {"log_level": 0})).close()  # accepted as a complete SASL config


def test_incomplete_sasl_is_one_clear_error(monkeypatch):
    set_env(monkeypatch, security_protocol="SASL_SSL")
    with pytest.raises(ValidationError, match="needs MEMEGUARD_KAFKA_SASL_USERNAME and MEMEGUARD_KAFKA_SASL_PASSWORD"):
        KafkaSecurity()


def test_worker_app_carries_them_as_faust_broker_credentials(monkeypatch):
    set_env(monkeypatch, security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", sasl_username="svc",
            sasl_password="pw", ssl_cafile=certifi.where())
    app = create_app(WorkerSettings(kafka_bootstrap="broker:9093"), pipeline=None)  # type: ignore[arg-type]
    creds = app.conf.broker_credentials
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value) == ("svc", "pw", "SCRAM-SHA-256")
    assert creds.protocol.value == "SASL_SSL" and creds.ssl_context is not None

    set_env(monkeypatch, security_protocol="SSL")
    app = create_app(WorkerSettings(kafka_bootstrap="broker:9093", group_id="g2"), pipeline=None)  # type: ignore[arg-type]
    assert isinstance(app.conf.broker_credentials, faust.SSLCredentials)


def test_every_kafka_client_of_the_service_is_built_from_client_config():
    # A client built from a hand-written dict would silently ignore MEMEGUARD_KAFKA_SECURITY_PROTOCOL.
    offenders = [str(p.relative_to(CONSUMER)) for p in CONSUMER.rglob("*.py")
                 # devinfra talks only to the embedded plaintext dev broker it started itself
                 if p.relative_to(CONSUMER).as_posix() not in ("kafka/config.py", "devinfra/stack.py")
                 and '"bootstrap.servers"' in p.read_text()]
    assert offenders == []


@pytest.fixture
def redis_with_password(tmp_path):
    port = free_port()
    proc = subprocess.Popen([redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--requirepass", "hunter2", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not port_open(port):
        assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
        time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.mark.integration
def test_redis_auth_from_the_url(redis_with_password):
    port = redis_with_password
    verdict = verdict_like("auth-1")

    async def round_trip(url: str) -> tuple[object, dict[str, int]]:
        cache = VerdictCache(url, ttl_s=60, timeout_s=1.0, retry_after_s=0.0)
        try:
            await cache.put_many({"k": verdict})
            return (await cache.get_many(["k"]))[0], dict(cache.counts)
        finally:
            await cache.close()

    found, counts = asyncio.run(round_trip(f"redis://:hunter2@127.0.0.1:{port}/0"))
    assert found == verdict and counts["hits"] == 1 and counts.get("errors", 0) == 0
    # Without the password the cache degrades (counted), it does not crash the worker.
    found, counts = asyncio.run(round_trip(f"redis://127.0.0.1:{port}/0"))
    assert found is None and counts["errors"] >= 1


def test_rediss_url_gives_a_tls_connection():
    cache = VerdictCache("rediss://:pw@cache.internal:6380/0?ssl_cert_reqs=required", ttl_s=60, timeout_s=1.0,
                         retry_after_s=0.0)
    pool = cache._client.connection_pool
    assert pool.connection_class.__name__ == "SSLConnection"
    assert pool.connection_kwargs["password"] == "pw" and pool.connection_kwargs["ssl_cert_reqs"] == "required"
