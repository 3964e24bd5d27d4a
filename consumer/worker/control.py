"""The control channel: commands every worker must see, broadcast over a topic, and the fleet's status topic.

Two actions. `reload` (a bundle path) is the original one-shot hot reload: only commands published while the
worker runs are applied. `rollout` carries a fleet `revision` that only ever grows (`memeguard rollout` and
`rollback` publish the next one): a worker reads the whole control topic at start and applies the highest
revision, so one started after a rollout serves the rolled-out bundle; an older or repeated revision is
ignored. Ordering is by revision only, never by comparing timestamps with the worker's clock.

Every worker reports on `<control_topic>.status` (keyed by worker id) when it loads, refuses or swaps in a
revision, and every `fleet_heartbeat_s`: `memeguard rollout` reads it to print who serves what.
"""

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from pydantic import BaseModel, Field, ValidationError, model_validator

from consumer.errors import ConfigError
from consumer.kafka.config import client_config

log = logging.getLogger(__name__)

BUNDLE_SCHEMES = ("", "file")  # a bundle every worker reads from its own file system (shared volume, image)


class ControlCommand(BaseModel):
    action: Literal["reload", "rollout"]
    bundle_path: str | None = None  # reload
    revision: int | None = Field(None, ge=1, description="rollout: fleet revision, the highest one wins.")
    bundle_uri: str | None = Field(None, description="rollout: a local path or file:// URI of the bundle.")
    model_version: str | None = Field(None, description="rollout: BundleRuntime.version announced for the bundle.")
    bundle_sha256: str | None = Field(None, description="rollout: ModelBundle.fingerprint announced for it.")
    restores: int | None = Field(None, description="rollback: the earlier revision whose bundle it re-publishes.")
    command_id: str | None = Field(None, description="Unique per publication: who won a revision taken twice.")
    issued_at: datetime | None = Field(None, description="For people reading the topic; never compared.")
    issued_by: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> "ControlCommand":
        if self.action == "rollout" and (self.revision is None or self.bundle_uri is None):
            raise ValueError("a rollout command needs a revision and a bundle_uri")
        return self


def bundle_path_of(uri: str) -> Path:
    """A bundle URI as a local path: `/path`, `relative/path` or `file:///path`; other schemes are refused."""
    parsed = urlparse(uri)
    if len(parsed.scheme) == 1:  # a Windows drive letter is no scheme
        return Path(uri)
    if parsed.scheme not in BUNDLE_SCHEMES:
        raise ConfigError(f"Bundle URI {uri!r}: scheme {parsed.scheme}:// is not supported; give a local path or "
                          "a file:// URI of a bundle every worker can read (a shared volume).")
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"Bundle URI {uri!r}: file:// URIs must name a local path (file:///path).")
        return Path(unquote(parsed.path))
    return Path(uri)


class WorkerStatus(BaseModel):
    """One worker's report on the status topic (its key is `worker_id`: compaction keeps the latest)."""

    worker_id: str
    state: Literal["serving", "ready", "loading", "rejected", "stopped"]
    revision: int = Field(0, description="Fleet revision this worker serves (or has ready); 0 = configured bundle.")
    model_version: str
    target_revision: int | None = Field(None, description="The revision it was asked for last.")
    error: str | None = Field(None, description="Why target_revision was refused.")
    refused: list[int] = Field(default_factory=list, description="Revisions it refused (latest few).")
    heartbeat_s: float
    updated_at: datetime


def status_topic_of(control_topic: str, status_topic: str | None = None) -> str:
    return status_topic or f"{control_topic}.status"


def send_command(bootstrap: str, topic: str, command: ControlCommand) -> None:
    producer = Producer(client_config(bootstrap))
    producer.produce(topic, value=command.model_dump_json(exclude_none=True).encode())
    if producer.flush(10):
        raise TimeoutError(f"control command not acknowledged by {bootstrap}")


def parse_command(value: bytes | None, offset: int) -> ControlCommand | None:
    """The command in a control-topic record, or None (logged) when it is not a valid one."""
    try:
        return ControlCommand.model_validate_json(value or b"")
    except ValidationError as e:
        log.warning("ignoring invalid control command at offset %d: %s", offset, e)
        return None


class ControlListener:
    """Reads the control topic from its beginning (no group: every worker sees every command).

    The records already there when it starts are history: handed to `on_history` at once (the fleet
    member takes its latest rollout from them; old `reload`s are not replayed), then each new command to
    `on_command`. `caught_up` is set once the history is through."""

    def __init__(self, bootstrap: str, topic: str, on_command: Callable[[ControlCommand], None],
                 on_history: Callable[[list[ControlCommand]], None] | None = None) -> None:
        self.bootstrap, self.topic, self.on_command, self.on_history = bootstrap, topic, on_command, on_history
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="control-listener", daemon=True)

    def start(self) -> "ControlListener":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        consumer = Consumer(client_config(self.bootstrap, {"group.id": "memeguard-control",
                                                              "enable.auto.commit": False}))
        try:
            parts = consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
            marks = {p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10) for p in parts}
            ends = {p: high for p, (_low, high) in marks.items()}
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
            history: list[ControlCommand] = []
            behind = {p for p, (low, high) in marks.items() if high > low}
            while not self._stop.is_set():
                if not behind and not self.caught_up.is_set():
                    if self.on_history is not None:
                        self.on_history(history)
                    self.caught_up.set()
                msg = consumer.poll(0.5)
                if msg is None or msg.error():
                    continue
                command = parse_command(msg.value(), msg.offset())
                if msg.partition() in behind:
                    if msg.offset() >= ends[msg.partition()] - 1:
                        behind.discard(msg.partition())
                    if command is not None:
                        history.append(command)
                    continue
                if command is not None:
                    log.info("control command: %s", command.model_dump(exclude_none=True))
                    self.on_command(command)
        except Exception:
            log.exception("control listener stopped; bundle reloads still follow the watched path")
        finally:
            self.caught_up.set()  # nobody waits on a listener that died
            consumer.close()


class FleetMember:
    """A worker's side of fleet rollouts: applies the highest revision through the bundle watcher (load,
    golden set, swap between batches) and reports each step on the status topic and in the metrics."""

    def __init__(self, bootstrap: str, control_topic: str, status_topic: str, watcher: Any, current: Any,
                 metrics: Any = None, worker_id: str | None = None, heartbeat_s: float = 15.0) -> None:
        self.bootstrap, self.control_topic, self.status_topic = bootstrap, control_topic, status_topic
        self.watcher, self.metrics, self.heartbeat_s = watcher, metrics, heartbeat_s
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self._lock = threading.Lock()
        self.revision = 0  # serving (or validated, swapped in at the next batch)
        self.target: int | None = None  # highest revision asked for
        self.model_version: str = current.version
        self.state: str = "serving"
        self.error: str | None = None
        self.refused: list[int] = []
        self._swapped_revision = 0
        self._producer = Producer(client_config(bootstrap, {"linger.ms": 0}))
        self._stop = threading.Event()
        watcher.on_ready, watcher.on_rejected, watcher.on_swapped = self._ready, self._rejected, self._swapped
        self.listener = ControlListener(bootstrap, control_topic, self.on_command, self.on_history)
        if metrics is not None:
            metrics.fleet_revision.set(0)

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
        return self

    def stop(self) -> None:
        self._stop.set()
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
        if command.action == "reload":
            self.watcher.request_reload(command.bundle_path)
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
        self.watcher.request_reload(path, tag=command, expect_version=command.model_version)
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
                                refused=self.refused,
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
