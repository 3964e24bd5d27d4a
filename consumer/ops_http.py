"""`/metrics`, `/healthz` and `/readyz` on one small HTTP port, for the worker, replay and the alerter.

It runs in a daemon thread with the standard library's server so it keeps answering while the event loop
is busy with a batch, and so a blocked loop shows up as a failing `/healthz` instead of a silent one.

- `/healthz` (liveness): 200 while the process's heartbeat is fresh; 503 once it is stale (restart me).
- `/readyz` (readiness): 200 when the bundle is loaded and the broker answers; Redis being down does not
  make the worker unready (it serves without the cache) but the body says `degraded`.
"""

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

import redis
from confluent_kafka.admin import AdminClient
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from consumer.kafka_config import client_config
from consumer.metrics import PipelineMetrics

log = logging.getLogger(__name__)


class HasRegistry(Protocol):
    registry: CollectorRegistry


def broker_probe(bootstrap: str, timeout_s: float = 2.0) -> Callable[[], str | None]:
    """Returns None when the broker answers a metadata request, else the reason it did not."""
    client = AdminClient(client_config(bootstrap, {"socket.timeout.ms": int(timeout_s * 1000)}))

    def probe() -> str | None:
        try:
            client.list_topics(timeout=timeout_s)
            return None
        except Exception as e:  # confluent raises KafkaException or a plain error on timeouts
            return f"broker {bootstrap} unreachable: {e}"

    return probe


def redis_probe(url: str, timeout_s: float = 0.5) -> Callable[[], str | None] | None:
    if not url:
        return None
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    def probe() -> str | None:
        try:
            client.ping()
            return None
        except (redis.RedisError, OSError) as e:
            return f"redis unreachable: {e}"

    return probe


@dataclass
class Health:
    """What the probes report. Callables are evaluated at request time; each returns None when fine."""

    bundle: Callable[[], str | None] | None = None  # only the processes that serve a model check one
    broker: Callable[[], str | None] | None = None
    redis: Callable[[], str | None] | None = None
    stale_after_s: float = 60.0
    _beat: float | None = None  # None until the event loop runs: start-up is not a hang
    metrics: PipelineMetrics | None = None

    def heartbeat(self) -> None:
        self._beat = time.monotonic()

    def live(self) -> tuple[bool, dict]:
        if self._beat is None:
            return True, {"status": "starting"}
        age = time.monotonic() - self._beat
        return age < self.stale_after_s, {"status": "alive" if age < self.stale_after_s else "stalled",
                                          "heartbeat_age_s": round(age, 3)}

    def ready(self) -> tuple[bool, dict]:
        checks: dict[str, str] = {}
        ok = True
        if self.bundle is not None:
            bundle_problem = self.bundle()
            checks["bundle"] = bundle_problem or "loaded"
            ok &= bundle_problem is None
        if self.broker is not None:
            problem = self.broker()
            checks["broker"] = problem or "reachable"
            ok &= problem is None
            if self.metrics is not None:
                self.metrics.broker_up.set(problem is None)
        if self.redis is None:
            checks["redis"] = "disabled"
        else:
            problem = self.redis()
            checks["redis"] = "reachable" if problem is None else f"degraded: {problem}; serving without the cache"
            if self.metrics is not None:
                self.metrics.redis_up.set(problem is None)
        state = "ready" if ok else "not ready"
        if ok and checks["redis"].startswith("degraded"):
            state = "degraded"
        return ok, {"status": state, "checks": checks}


class OpsServer:
    def __init__(self, metrics: HasRegistry, health: Health, port: int, host: str = "0.0.0.0") -> None:
        self.metrics, self.health = metrics, health
        handler = self._handler()
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="memeguard-ops-http", daemon=True)

    def start(self) -> "OpsServer":
        self._thread.start()
        log.info("metrics and health on port %d", self.port, extra={"port": self.port})
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                path = self.path.split("?")[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server.metrics.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, body = server.health.live() if path == "/healthz" else server.health.ready()
                    self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")
                else:
                    self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

            def log_message(self, *args: object) -> None:  # scrapes every few seconds would flood the log
                pass

        return Handler
