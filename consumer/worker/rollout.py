"""`memeguard rollout BUNDLE_URI` and `memeguard rollback`: a versioned command on the control topic, then
the workers' answers from the status topic (consumer/worker/fleet.py has the worker side).

The revision is the highest one on the control topic plus one; the command names the model version and
fingerprint read from the bundle's manifest here, so a worker refuses any other bundle found at that path.
A rollback re-publishes an earlier revision's bundle as a new, higher revision: the fleet only moves forward.

Commands are signed with MEMEGUARD_CONTROL_KEY (HMAC; why HMAC and not sha256 pinning alone: control.py's
docstring) and the history is read through the same ControlAuth as the workers': a forged rollout on the
topic neither sets the next revision nor becomes a rollback's target (a rollback would sign it).
"""

import getpass
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from consumer.core.bundle import ModelBundle
from consumer.errors import ConfigError
from consumer.kafka.config import client_config
from consumer.kafka.topic_reader import read_topic
from consumer.kafka.topics import prepare_topics, wait_for_broker
from consumer.settings import KafkaSettings
from consumer.worker.control import (
    FROM_SETTINGS,
    ControlAuth,
    ControlCommand,
    WorkerStatus,
    bundle_path_of,
    parse_command,
    send_command,
    status_topic_of,
)


def model_version_of(bundle: ModelBundle) -> str:
    """What BundleRuntime.version says for this bundle (runtime.py; without loading ONNX Runtime)."""
    return f"{bundle.manifest.name}@{bundle.manifest.version}+{bundle.fingerprint[:8]}"


def rollouts(bootstrap: str, control_topic: str, key=FROM_SETTINGS) -> list[ControlCommand]:  # noqa: ANN001
    """The rollout commands on the control topic that a worker would act on (signed with `key`, default
    MEMEGUARD_CONTROL_KEY), first publication of each revision only (workers apply the first one they read; a
    revision published twice by a race loses its second copy)."""
    auth = ControlAuth.of(bootstrap, key)
    seen: dict[int, ControlCommand] = {}
    for record in read_topic(bootstrap, control_topic, timeout_s=30):
        c = parse_command(record.value, record.offset, control_topic, auth)
        if c is not None and c.action == "rollout" and c.revision not in seen:
            seen[c.revision or 0] = c
    return [seen[r] for r in sorted(seen)]


def rollback_target(history: list[ControlCommand], refused: set[int] = frozenset()) -> ControlCommand:
    """The revision that served before the current one. Revisions a worker refused never served and are
    skipped; a rollback's predecessor is the revision before the one it restored, so rollbacks in a row walk
    back through history instead of toggling. Before the first rollout the fleet served the bundle the first
    rollout recorded (`previous_bundle_uri`): returned as revision 0, re-published with `restores=0`."""
    by_revision = {c.revision: c for c in history}
    served = [c for c in history if c.revision not in refused]
    if not served:
        raise ConfigError("Nothing to roll back: no rollout on the control topic served yet.")
    current = served[-1]
    point = current.restores if current.restores is not None else current.revision or 0
    if point == 0:
        raise ConfigError(f"Nothing to roll back to: revision {current.revision} already restored the bundle the fleet "
                          "served before revision 1.")
    earlier = [c for c in served if (c.revision or 0) < point]
    if not earlier:
        first = min(history, key=lambda c: c.revision or 0)
        if first.previous_bundle_uri:
            return ControlCommand.model_construct(action="rollout", revision=0, bundle_uri=first.previous_bundle_uri,
                                                  restores=None, previous_bundle_uri=None)
        raise ConfigError(f"Nothing to roll back to: revision {point} is the first rollout on the control topic and "
                          "recorded no earlier bundle (no live worker reported one when it was published); roll the "
                          "bundle you want out with `memeguard rollout BUNDLE`.")
    target = earlier[-1]
    return by_revision.get(target.restores, target) if target.restores else target


def command_for(uri: str | ModelBundle, revision: int, restores: int | None = None,
                previous_bundle_uri: str | None = None) -> ControlCommand:
    # Every file's sha256: a broken copy is refused here, before the fleet sees it.
    bundle = uri if isinstance(uri, ModelBundle) else ModelBundle.load(bundle_path_of(uri))
    path = bundle.root
    return ControlCommand(action="rollout", revision=revision, bundle_uri=str(path.resolve()),
                          model_version=model_version_of(bundle), bundle_sha256=bundle.fingerprint,
                          restores=restores, previous_bundle_uri=previous_bundle_uri, command_id=uuid.uuid4().hex,
                          issued_at=datetime.now(UTC), issued_by=f"{getpass.getuser()}@{socket.gethostname()}")


def fleet_bundle(s: KafkaSettings) -> str | None:
    """The bundle the live workers serve before any rollout (their status at revision 0), when they agree on one."""
    uris = {st.bundle_uri for st in live_statuses(s).values() if st.revision == 0 and st.bundle_uri}
    return uris.pop() if len(uris) == 1 else None


def publish(s: KafkaSettings, command_of_revision) -> ControlCommand:  # noqa: ANN001 (int -> ControlCommand)
    wait_for_broker(s.kafka_bootstrap, s.connect_timeout_s)  # an unreachable broker: one clear error, not a librdkafka trace
    prepare_topics(s, [s.control_topic], partitions=1)
    history = rollouts(s.kafka_bootstrap, s.control_topic, s.control_key)
    command = command_of_revision(history, (history[-1].revision or 0) + 1 if history else 1)
    send_command(s.kafka_bootstrap, s.control_topic, command, s.control_key)
    won = {c.revision: c.command_id for c in rollouts(s.kafka_bootstrap, s.control_topic, s.control_key)}
    if won.get(command.revision) != command.command_id:
        raise ConfigError(f"Another rollout took revision {command.revision} at the same time; run it again.")
    return command


def roll_out(s: KafkaSettings, uri: str) -> ControlCommand:
    bundle = ModelBundle.load(bundle_path_of(uri))  # a wrong URI or a broken bundle fails before the broker is asked

    def make(history: list[ControlCommand], revision: int) -> ControlCommand:
        # The first rollout records what the fleet serves now: `rollback` can then return to it.
        previous = fleet_bundle(s) if not history else None
        return command_for(bundle, revision, previous_bundle_uri=previous)

    return publish(s, make)


def roll_back(s: KafkaSettings) -> ControlCommand:
    def make(history: list[ControlCommand], revision: int) -> ControlCommand:
        refused = {r for st in live_statuses(s).values() for r in st.refused}
        target = rollback_target(history, refused)
        return command_for(target.bundle_uri or "", revision, restores=target.revision)

    return publish(s, make)


def alive(st: WorkerStatus, now: datetime) -> bool:
    """Not stopped and heard from within three heartbeats (the only use of clocks here: a skewed clock can
    make a worker count as gone or alive, it never orders revisions)."""
    return st.state != "stopped" and st.updated_at >= now - timedelta(seconds=3 * st.heartbeat_s)


def live_statuses(s: KafkaSettings) -> dict[str, WorkerStatus]:
    latest: dict[str, WorkerStatus] = {}
    for record in read_topic(s.kafka_bootstrap, status_topic_of(s.control_topic, s.status_topic), timeout_s=30):
        try:
            latest[record.key.decode()] = WorkerStatus.model_validate_json(record.value)
        except (ValueError, AttributeError):
            continue
    now = datetime.now(UTC)
    return {w: st for w, st in latest.items() if alive(st, now)}


@dataclass(frozen=True)
class FleetReport:
    revision: int
    statuses: dict[str, WorkerStatus]
    answered: set[str]

    def ok(self, worker: str) -> bool:
        st = self.statuses[worker]
        return worker in self.answered and st.revision == self.revision and st.state in ("ready", "serving")

    @property
    def all_ok(self) -> bool:
        return bool(self.statuses) and all(self.ok(w) for w in self.statuses)


def wait_for_fleet(s: KafkaSettings, revision: int, timeout_s: float, expect: int = 0) -> FleetReport:
    """Follow the status topic until every live worker (`alive`) answered `revision` (loaded or refused it)
    and at least `expect` did, or the timeout."""
    topic = status_topic_of(s.control_topic, s.status_topic)
    consumer = Consumer(client_config(s.kafka_bootstrap, {"group.id": "memeguard-rollout", "enable.auto.commit": False}))
    statuses: dict[str, WorkerStatus] = {}
    answered: set[str] = set()
    started = datetime.now(UTC)
    deadline = time.monotonic() + timeout_s
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        parts = list(meta.partitions) if meta is not None and meta.error is None else []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        # Statuses already on the topic are read through before any verdict: a worker's old record may come last.
        marks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in parts}
        ends = {p: high for p, (_low, high) in marks.items()}
        behind = {p for p, (low, high) in marks.items() if high > low}
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5) if parts else time.sleep(0.5)
            if msg is not None and not msg.error() and msg.partition() in behind \
                    and msg.offset() >= ends[msg.partition()] - 1:
                behind.discard(msg.partition())
            if msg is not None and not msg.error() and msg.value() is not None:
                try:
                    st = WorkerStatus.model_validate_json(msg.value())
                except ValueError:
                    continue
                if not alive(st, started):
                    statuses.pop(st.worker_id, None)
                    answered.discard(st.worker_id)
                    continue
                statuses[st.worker_id] = st
                if (st.target_revision or 0) >= revision and st.state != "loading":
                    answered.add(st.worker_id)
                else:
                    answered.discard(st.worker_id)
            if not behind and len(statuses) >= max(expect, 1) and answered >= set(statuses):
                break
            if not parts:  # the topic appears with the first worker's status
                meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
                if meta is not None and meta.error is None and meta.partitions:
                    parts = list(meta.partitions)
                    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    finally:
        consumer.close()
    return FleetReport(revision, statuses, answered)
