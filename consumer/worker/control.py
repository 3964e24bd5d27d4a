"""The control channel: commands every worker must see, broadcast over a topic, and the fleet's status topic.

Two actions. `reload` (a bundle path) is the original one-shot hot reload: only commands published while the
worker runs are applied. `rollout` carries a fleet `revision` that only ever grows (`memeguard rollout` and
`rollback` publish the next one): a worker reads the whole control topic at start and applies the highest
revision, so one started after a rollout serves the rolled-out bundle; an older or repeated revision is
ignored. Ordering is by revision only, never by comparing timestamps with the worker's clock.

Every worker reports on `<control_topic>.status` (keyed by worker id) when it loads, refuses or swaps in a
revision, and every `fleet_heartbeat_s`: `memeguard rollout` reads it to print who serves what.

Authenticity. Anyone who can write the control topic must not be able to steer the fleet, so a command is
acted on only when it verifies: an HMAC-SHA256 (key: MEMEGUARD_CONTROL_KEY) over the command's canonical
JSON and the topic's name, carried in the record as a `signature` member. HMAC rather than pinning commands
by bundle sha256: a sha256 in a command only proves that the bundle at the path is the one the command
names, not who named it (an adversary who can write the topic can name an old bundle, or one it placed on the
volume, with its correct sha256), and pinning against a list of allowed sha256s held by every worker would
need a worker setting changed for every rollout, which is what the control topic exists to avoid. Every
publisher (`memeguard rollout`, `rollback`, `promote`) goes through `send_command`, which signs, and every
worker reads through one `ControlAuth`, which verifies; the signed `bundle_sha256` is then checked against
the loaded bundle's manifest fingerprint (each file's sha256 checked at load), so the key authenticates the
command and the command pins the bundle. A signed command must carry a `command_id`; one already seen on the
topic is a replay and is refused (a copied `reload` cannot move the fleet back). Without a key, unsigned
commands are accepted only when every broker is on loopback (the development stack); on any other broker
a worker without a key acts on no command. Whatever does not verify or does not fit the schema is counted
(`memeguard_control_commands{result}`) and logged, never acted on, and never stops the listener.
"""

import atexit
import json
import logging
import os
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator

from consumer.errors import ConfigError
from consumer.kafka.config import client_config
from consumer.kafka.topics import is_loopback
from schemas.signing import SIGNATURE, canonical, sign, signature_refusal

log = logging.getLogger(__name__)

BUNDLE_SCHEMES = ("", "file")  # a bundle every worker reads from its own file system (shared volume, image)


MAX_REVISION = 2**63 - 1  # a Kafka-sized integer: a revision past it could never be followed by a higher one
MAX_COMMAND_BYTES = 64 * 1024  # a command is a few hundred bytes; anything far larger is not one
_SIGNATURE_CONTEXT = b"memeguard-control-v1"


class ControlCommand(BaseModel):
    action: Literal["reload", "rollout"]
    bundle_path: str | None = Field(None, max_length=4096)  # reload
    revision: int | None = Field(None, ge=1, le=MAX_REVISION,
                                 description="rollout: fleet revision, the highest one wins.")
    bundle_uri: str | None = Field(None, max_length=4096,
                                   description="rollout: a local path or file:// URI of the bundle.")
    model_version: str | None = Field(None, max_length=512,
                                      description="rollout: BundleRuntime.version announced for the bundle.")
    bundle_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                                      description="ModelBundle.fingerprint announced for the bundle (checked).")
    restores: int | None = Field(None, ge=0, le=MAX_REVISION,
                                 description="rollback: the earlier revision whose bundle it re-publishes; 0: the "
                                             "bundle the fleet served before revision 1 (previous_bundle_uri).")
    previous_bundle_uri: str | None = Field(
        None, max_length=4096, description="The first rollout: the bundle the live workers served before it (from "
                                           "their status), so that it can be rolled back.")
    command_id: str | None = Field(None, max_length=128,
                                   description="Unique per publication: who won a revision taken twice; replays.")
    issued_at: datetime | None = Field(None, description="For people reading the topic; never compared.")
    issued_by: str | None = Field(None, max_length=512)

    @model_validator(mode="after")
    def _complete(self) -> "ControlCommand":
        if self.action == "rollout" and (self.revision is None or self.bundle_uri is None):
            raise ValueError("a rollout command needs a revision and a bundle_uri")
        return self


def bundle_path_of(uri: str) -> Path:
    """A bundle URI as a local path: `/path`, `relative/path` or `file:///path`; other schemes are refused."""
    try:
        parsed = urlparse(uri)
    except ValueError as e:  # e.g. an unclosed `[` of an IPv6 host
        raise ConfigError(f"Bundle URI {uri!r} is not a URI: {e}; give a local path or a file:// URI.") from e
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
    bundle_uri: str | None = Field(None, description="The bundle it serves (resolved path): at revision 0 its "
                                                     "configured MEMEGUARD_BUNDLE_PATH.")
    heartbeat_s: float
    updated_at: datetime


def status_topic_of(control_topic: str, status_topic: str | None = None) -> str:
    return status_topic or f"{control_topic}.status"


class _FromSettings:
    """The default key: MEMEGUARD_CONTROL_KEY, read where it is needed (publishers such as `memeguard promote`
    and the worker's FleetMember are handed a bootstrap and a topic, not the settings object)."""


FROM_SETTINGS: Any = _FromSettings()
Key = SecretStr | str | bytes | None


def _key_bytes(key: Key | _FromSettings) -> bytes | None:
    if isinstance(key, _FromSettings):
        from consumer.settings import KafkaSettings

        key = KafkaSettings().control_key
    if isinstance(key, SecretStr):
        key = key.get_secret_value()
    if isinstance(key, str):
        key = key.encode()
    return key or None


def signature_of(key: bytes, topic: str, doc: dict) -> str:
    """HMAC-SHA256 of the command (without its signature) bound to the topic it is published on."""
    return sign(key, _SIGNATURE_CONTEXT, topic, doc)


def encode_command(topic: str, command: ControlCommand, key: Key | _FromSettings = FROM_SETTINGS) -> bytes:
    """The record value of `command` on `topic`, signed when there is a key; a command_id is added if missing."""
    command = command.model_copy(update={"command_id": command.command_id or uuid.uuid4().hex,
                                         "issued_at": command.issued_at or datetime.now(UTC)})
    doc = json.loads(command.model_dump_json(exclude_none=True))
    if (secret := _key_bytes(key)) is not None:
        doc[SIGNATURE] = signature_of(secret, topic, doc)
    return canonical(doc)


def send_command(bootstrap: str, topic: str, command: ControlCommand,
                 key: Key | _FromSettings = FROM_SETTINGS) -> None:
    """Publish `command`, signed with `key` (default MEMEGUARD_CONTROL_KEY). Without a key only a loopback
    (development) broker takes it: workers elsewhere would refuse an unsigned command."""
    secret = _key_bytes(key)
    if secret is None and not is_loopback(bootstrap):
        raise ConfigError("MEMEGUARD_CONTROL_KEY is not set: workers on a shared broker act only on signed control "
                          "commands. Set the key the workers have (docs/operations.md, Fleet rollout).")
    producer = Producer(client_config(bootstrap))
    producer.produce(topic, value=encode_command(topic, command, secret))
    if producer.flush(10):
        raise TimeoutError(f"control command not acknowledged by {bootstrap}")


# What a control record turned out to be: the first two are acted on, the others counted and logged only.
ACCEPTED = ("verified", "unchecked")  # unchecked: unsigned, taken because no key is set and the broker is loopback
REFUSED = ("invalid", "unsigned", "bad_signature", "replayed", "failed")


@dataclass(frozen=True)
class ControlAuth:
    """How a reader of the control topic decides whether to act on a record (see the module's docstring)."""

    key: bytes | None
    allow_unsigned: bool

    @classmethod
    def of(cls, bootstrap: str, key: Key | _FromSettings = FROM_SETTINGS) -> "ControlAuth":
        secret = _key_bytes(key)
        return cls(secret, secret is None and is_loopback(bootstrap))

    def read(self, topic: str, value: bytes | None) -> tuple[ControlCommand | None, str]:
        """The command in a record value and `verified` / `unchecked`, or None and why it is refused. Never
        raises, whatever the bytes: a control record is as untrusted as any input record."""
        if value is None or len(value) > MAX_COMMAND_BYTES:
            return None, "invalid"
        try:
            doc = json.loads(value)  # any UTF: a wrong encoding, deep nesting or a huge number is invalid
        except (ValueError, RecursionError):
            return None, "invalid"
        if not isinstance(doc, dict):
            return None, "invalid"
        refused = signature_refusal(doc, self.key, self.allow_unsigned, _SIGNATURE_CONTEXT, topic)
        if refused:
            return None, refused
        try:
            command = ControlCommand.model_validate(doc)
        except (ValidationError, ValueError, RecursionError):
            return None, "invalid"
        if self.key is not None and not command.command_id:
            return None, "invalid"  # every signer sets one; without it a replay could not be told
        return command, "verified" if self.key is not None else "unchecked"


def parse_command(value: bytes | None, offset: int, topic: str = "", auth: ControlAuth | None = None
                  ) -> ControlCommand | None:
    """The command in a control-topic record, or None (logged) when it is not a valid one. With `auth`, also
    None unless it verifies (see ControlAuth); without, the record's schema alone is checked."""
    command, result = (auth or ControlAuth(None, True)).read(topic, value)
    if command is None:
        log.warning("ignoring control record at offset %d: %s", offset, result)
    return command


class ControlListener:
    """Reads the control topic from its beginning (no group: every worker sees every command).

    The records already there when it starts are history: handed to `on_history` at once (the fleet
    member takes its latest rollout from them; old `reload`s are not replayed), then each new command to
    `on_command`. `caught_up` is set once the history is through. Only commands `auth` accepts are handed
    on, each command_id once; `counts` has every record's outcome (ACCEPTED or REFUSED), and no record,
    whatever its bytes, and no failing callback stops the listener."""

    def __init__(self, bootstrap: str, topic: str, on_command: Callable[[ControlCommand], None],
                 on_history: Callable[[list[ControlCommand]], None] | None = None,
                 auth: ControlAuth | None = None) -> None:
        self.bootstrap, self.topic, self.on_command, self.on_history = bootstrap, topic, on_command, on_history
        self.auth = auth if auth is not None else ControlAuth.of(bootstrap)
        self.counts: Counter[str] = Counter()
        self.caught_up = threading.Event()
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="control-listener", daemon=True)

    def start(self) -> "ControlListener":
        if self.auth.key is None:
            if self.auth.allow_unsigned:
                log.warning("MEMEGUARD_CONTROL_KEY is not set: unsigned control commands are accepted (loopback "
                            "development broker only)")
            else:
                log.error("MEMEGUARD_CONTROL_KEY is not set: every control command on %s is refused (rollouts "
                          "and reloads need the fleet's key); the watched bundle path still reloads", self.topic)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def accept(self, value: bytes | None, partition: int, offset: int) -> ControlCommand | None:
        """The command to act on in one record, or None; counted and, when refused, logged."""
        command, result = self.auth.read(self.topic, value)
        if command is not None and command.command_id is not None:
            if command.command_id in self._seen:
                command, result = None, "replayed"
            else:
                self._seen.add(command.command_id)
        self.counts[result] += 1
        if command is None:
            log.warning("control record refused, not acted on", extra={
                "result": result, "topic": self.topic, "partition": partition, "offset": offset})
        return command

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
                        self._call(self.on_history, history)
                    self.caught_up.set()
                msg = consumer.poll(0.5)
                if msg is None or msg.error():
                    continue
                try:
                    command = self.accept(msg.value(), msg.partition(), msg.offset())
                except Exception:  # never expected (accept() takes any bytes), never fatal
                    log.exception("control record at offset %d not read", msg.offset())
                    self.counts["failed"] += 1
                    command = None
                if msg.partition() in behind:
                    if msg.offset() >= ends[msg.partition()] - 1:
                        behind.discard(msg.partition())
                    if command is not None:
                        history.append(command)
                    continue
                if command is not None:
                    log.info("control command: %s", command.model_dump(exclude_none=True))
                    self._call(self.on_command, command)
        except Exception:
            log.exception("control listener stopped; bundle reloads still follow the watched path")
        finally:
            self.caught_up.set()  # nobody waits on a listener that died
            consumer.close()

    def _call(self, callback: Callable[[Any], None], what: Any) -> None:
        """A command that fails to apply is logged and counted; the next one is still read."""
        try:
            callback(what)
        except Exception:
            log.exception("control command not applied")
            self.counts["failed"] += 1


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
                 key: Key | _FromSettings = FROM_SETTINGS) -> None:
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
