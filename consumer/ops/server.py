"""`/metrics`, `/healthz` and `/readyz` on one small HTTP port, for the worker, replay and the alerter.

prometheus_client's own WSGI app serves `/metrics` (content negotiation, gzip, `name[]` filters); a tiny WSGI
router in front of it adds the two probes. It runs in prometheus_client's threading WSGI server on a daemon
thread, so it keeps answering while the event loop is busy with a batch (or the process still waits for the
broker), and a blocked loop shows up as a failing `/healthz` instead of a silent one.

- `/healthz` (liveness): 200 while the process's heartbeat is fresh; 503 once it is stale (restart me).
- `/readyz` (readiness): 200 when the bundle is loaded and the broker answers; Redis being down does not
  make the worker unready (it serves without the cache) but the body says `degraded`.
"""

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol
from wsgiref.simple_server import WSGIRequestHandler, make_server

from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from consumer.core import redis_client
from consumer.kafka.config import client_config
from consumer.ops.metrics import PipelineMetrics

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"


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
    """Redis (or every master of a Redis Cluster) for /readyz."""
    return redis_client.probe(url, timeout_s)


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


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:  # scrapes every few seconds would flood the log
        pass


class OpsServer:
    def __init__(self, metrics: HasRegistry, health: Health, port: int, host: str = "0.0.0.0") -> None:
        self.metrics, self.health = metrics, health
        self.httpd = make_server(host, port, self._router(), ThreadingWSGIServer, handler_class=_QuietHandler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="memeguard-ops-http", daemon=True)

    def start(self) -> "OpsServer":
        self._thread.start()
        log.info("metrics and health on port %d", self.port, extra={"port": self.port})
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _router(self) -> Callable:
        metrics_app = make_wsgi_app(self.metrics.registry)
        probes = {LIVENESS_PATH: self.health.live, READINESS_PATH: self.health.ready}

        def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == METRICS_PATH:
                return metrics_app(environ, start_response)
            if path in probes:
                ok, body = probes[path]()
                return _respond(start_response, "200 OK" if ok else "503 Service Unavailable",
                                json.dumps(body).encode(), "application/json")
            return _respond(start_response, "404 Not Found",
                            f"not found: try {METRICS_PATH}, {LIVENESS_PATH} or {READINESS_PATH}\n".encode(), "text/plain")

        return app


def _respond(start_response: Callable, status: str, body: bytes, content_type: str) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]
