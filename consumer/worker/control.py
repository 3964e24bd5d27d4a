"""The control channel's records: the commands every worker must see, broadcast over a topic, and the fleet's
status reports; how a command is signed (`send_command`) and verified (`ControlAuth`). The worker's side lives
beside it: the thread that reads the topic (worker/control_listener.py) and the fleet member that applies
rollouts and reports on the status topic (worker/fleet.py).

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

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from confluent_kafka import Producer
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


class FromSettings:
    """The default key: MEMEGUARD_CONTROL_KEY, read where it is needed (publishers such as `memeguard promote`
    and the worker's FleetMember are handed a bootstrap and a topic, not the settings object)."""


FROM_SETTINGS: Any = FromSettings()
Key = SecretStr | str | bytes | None


def _key_bytes(key: Key | FromSettings) -> bytes | None:
    if isinstance(key, FromSettings):
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


def encode_command(topic: str, command: ControlCommand, key: Key | FromSettings = FROM_SETTINGS) -> bytes:
    """The record value of `command` on `topic`, signed when there is a key; a command_id is added if missing."""
    command = command.model_copy(update={"command_id": command.command_id or uuid.uuid4().hex,
                                         "issued_at": command.issued_at or datetime.now(UTC)})
    doc = json.loads(command.model_dump_json(exclude_none=True))
    if (secret := _key_bytes(key)) is not None:
        doc[SIGNATURE] = signature_of(secret, topic, doc)
    return canonical(doc)


def send_command(bootstrap: str, topic: str, command: ControlCommand,
                 key: Key | FromSettings = FROM_SETTINGS) -> None:
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
    def of(cls, bootstrap: str, key: Key | FromSettings = FROM_SETTINGS) -> "ControlAuth":
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
