"""A worker's side of fleet rollouts: the highest revision on the control topic is loaded through the bundle
watcher and each step reported on `<control_topic>.status` (keyed by worker id), also every `fleet_heartbeat_s`;
`memeguard rollout` reads it to print who serves what. The commands and their verification: worker/control.py."""

import atexit
import logging
import os
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from consumer.errors import ConfigError
from consumer.kafka.config import client_config
from consumer.worker.control import (
    FROM_SETTINGS,
    ControlAuth,
    ControlCommand,
    FromSettings,
    Key,
    WorkerStatus,
    bundle_path_of,
)
from consumer.worker.control_listener import ControlListener

log = logging.getLogger(__name__)


def _pin(command: ControlCommand) -> dict[str, str]:
    """The watcher's sha256 pin, when the command announces one (`memeguard rollout` always does)."""
    return {"expect_sha256": command.bundle_sha256} if command.bundle_sha256 else {}


def default_worker_id() -> str:
    """A worker's name on the status topic when MEMEGUARD_WORKER_ID is unset: its stable identity,
    MEMEGUARD_INSTANCE_ID (a pod name, `--processes` members get `-<i>`), else the host name. Stable across
    restarts, so a restarted worker replaces its own status instead of adding one more (a pid would)."""
    return os.environ.get("MEMEGUARD_INSTANCE_ID", "").strip() or socket.gethostname()


def _root_of(runtime: Any) -> str | None:
    try:
        return str(Path(runtime.bundle.root).resolve())
    except (AttributeError, OSError, TypeError, ValueError):
        return None


class FleetMember:
    """A worker's side of fleet rollouts: applies the highest revision through the bundle watcher (load,
    golden set, swap between batches) and reports each step on the status topic and in the metrics."""

    def __init__(self, bootstrap: str, control_topic: str, status_topic: str, watcher: Any, current: Any,
                 metrics: Any = None, worker_id: str | None = None, heartbeat_s: float = 15.0,
                 key: Key | FromSettings = FROM_SETTINGS) -> None:
        self.bootstrap, self.control_topic, self.status_topic = bootstrap, control_topic, status_topic
        self.watcher, self.metrics, self.heartbeat_s = watcher, metrics, heartbeat_s
        self.worker_id = worker_id or default_worker_id()
        self._lock = threading.Lock()
        self.revision = 0  # serving (or validated, swapped in at the next batch)
        self.target: int | None = None  # highest revision asked for
        self.model_version: str = current.version
        self.bundle_uri: str | None = _root_of(current)
        self.state: str = "serving"
        self.error: str | None = None
        self.refused: list[int] = []
        self._swapped_revision = 0
        self._producer = Producer(client_config(bootstrap, {"linger.ms": 0}))
        self._stop = threading.Event()
        watcher.on_ready, watcher.on_rejected, watcher.on_swapped = self._ready, self._rejected, self._swapped
        self.listener = ControlListener(bootstrap, control_topic, self.on_command, self.on_history,
                                        ControlAuth.of(bootstrap, key))
        if metrics is not None:
            metrics.fleet_revision.set(0)
            metrics.watch_counts("memeguard_control_commands",
                                 "Control-topic records by outcome: verified or unchecked (acted on), invalid, "
                                 "unsigned, bad_signature, replayed, failed (refused, never acted on).",
                                 "result", lambda: dict(self.listener.counts))

    def start(self, catch_up_timeout_s: float = 30.0) -> "FleetMember":
        """Start listening; returns once the history is read and its latest rollout loaded (or refused)."""
        self.listener.start()
        if not self.listener.caught_up.wait(catch_up_timeout_s):
            log.warning("control topic %s not read within %.0fs; serving the configured bundle meanwhile",
                        self.control_topic, catch_up_timeout_s)
        elif self.target is not None:
            self.watcher.wait_idle(catch_up_timeout_s)
        self.publish()
        threading.Thread(target=self._heartbeat, name="fleet-heartbeat", daemon=True).start()
        # A clean exit (SIGTERM, SIGINT, a return from the worker loop) says so at once: `rollout` stops waiting
        # for this worker instead of counting it live for three heartbeats. A crash or a kill -9 does not; its
        # status expires after three heartbeats, and a restart under the same id replaces it.
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        atexit.unregister(self.stop)
        self.listener.stop()
        with self._lock:
            self.state = "stopped"
        self.publish()

    # --- commands ---------------------------------------------------------------------------------
    def on_history(self, history: list[ControlCommand]) -> None:
        rollouts = [c for c in history if c.action == "rollout"]
        if rollouts:
            self.apply(max(rollouts, key=lambda c: c.revision or 0))

    def on_command(self, command: ControlCommand) -> None:
        """A verified command (ControlListener). A `reload` re-points the watched path only once its bundle
        passed its checks (BundleWatcher.request_reload); a refused one leaves the real path watched."""
        if command.action == "reload":
            self.watcher.request_reload(command.bundle_path, **_pin(command))
        else:
            self.apply(command)

    def apply(self, command: ControlCommand) -> bool:
        """Ask the watcher for the command's bundle unless its revision is not newer than the last one asked
        for. False when ignored."""
        revision = command.revision or 0
        with self._lock:
            if revision <= max(self.target or 0, self.revision):
                log.info("fleet revision %d ignored: revision %d already applied", revision,
                         max(self.target or 0, self.revision))
                return False
            self.target = revision
        log.info("fleet rollout", extra={"revision": revision, "bundle": command.bundle_uri,
                                         "model": command.model_version})
        try:
            path = bundle_path_of(command.bundle_uri or "")
        except ConfigError as e:
            self._rejected(str(e), command)
            return True
        if command.model_version is not None and command.model_version == self.model_version:
            self._ready_version(command)  # the very model already serves: nothing to load
            return True
        with self._lock:
            self.state = "loading"
        self.publish()
        self.watcher.request_reload(path, tag=command, expect_version=command.model_version, **_pin(command))
        return True

    # --- watcher callbacks ------------------------------------------------------------------------
    def _ready_version(self, command: ControlCommand) -> None:
        with self._lock:
            self.revision = self._swapped_revision = command.revision or 0
            self.state, self.error = "serving", None
        if self.metrics is not None:
            self.metrics.fleet_revision.set(self.revision)
        self.publish()

    def _ready(self, runtime: Any, tag: Any) -> None:
        if not isinstance(tag, ControlCommand):
            return  # a plain reload (watched path, `reload` command): no fleet revision
        with self._lock:
            if (tag.revision or 0) < (self.target or 0):
                return  # superseded while loading; the newer one reports
            self.revision, self.model_version, self.state, self.error = tag.revision or 0, runtime.version, "ready", None
            self.bundle_uri = _root_of(runtime)
        self.publish()

    def _rejected(self, error: str, tag: Any) -> None:
        if not isinstance(tag, ControlCommand):
            return
        with self._lock:
            if (tag.revision or 0) < (self.target or 0):
                return
            self.state, self.error = "rejected", error
            self.refused = [*self.refused, tag.revision or 0][-20:]
        self.publish()

    def _swapped(self, runtime: Any, tag: Any) -> None:
        with self._lock:
            self.model_version = runtime.version
            self.bundle_uri = _root_of(runtime)
            if isinstance(tag, ControlCommand):
                self._swapped_revision = tag.revision or 0
            elif tag is None:  # a plain reload replaced the rolled-out bundle: no revision serves any more
                self._swapped_revision = self.revision = 0
            if self.state != "loading":
                self.state = "serving"
        if self.metrics is not None:
            self.metrics.fleet_revision.set(self._swapped_revision)
        self.publish(wait=False)  # on the worker's event loop: the heartbeat thread's flush sends it

    # --- status -----------------------------------------------------------------------------------
    def status(self) -> WorkerStatus:
        with self._lock:
            return WorkerStatus(worker_id=self.worker_id, state=self.state, revision=self.revision,  # type: ignore[arg-type]
                                model_version=self.model_version, target_revision=self.target, error=self.error,
                                refused=self.refused, bundle_uri=self.bundle_uri,
                                heartbeat_s=self.heartbeat_s, updated_at=datetime.now(UTC))

    def publish(self, wait: bool = True) -> None:
        try:
            self._producer.produce(self.status_topic, key=self.worker_id.encode(),
                                   value=self.status().model_dump_json().encode())
            self._producer.flush(5) if wait else self._producer.poll(0)
        except Exception:  # a status that cannot go out must not disturb serving
            log.exception("fleet status not published")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.publish()  # also flushes a status produced without waiting
