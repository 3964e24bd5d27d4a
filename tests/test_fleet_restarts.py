"""Issue 29 items 1 and 2: `rollback` undoes the first rollout (back to the bundle the fleet served before it),
and fleet commands survive worker restarts: a stable identity (MEMEGUARD_INSTANCE_ID, else the host name), a
`stopped` status on a clean shutdown, and silent members expiring. Real worker processes on the real broker."""

import json
import socket
from datetime import UTC, datetime, timedelta

import pytest

from consumer.cli import main as memeguard
from consumer.core.bundle import ModelBundle
from consumer.errors import ConfigError
from consumer.kafka.topic_reader import read_topic
from consumer.settings import KafkaSettings
from consumer.worker.control import ControlCommand, WorkerStatus
from consumer.worker.fleet import default_worker_id
from consumer.worker.rollout import alive, model_version_of, rollback_target, wait_for_fleet
from tests.test_rollout import _verdict_versions, bundle_b  # noqa: F401 (a fixture)


def _rollout(revision: int, uri: str, restores: int | None = None, previous: str | None = None) -> ControlCommand:
    return ControlCommand(action="rollout", revision=revision, bundle_uri=uri, restores=restores,
                          previous_bundle_uri=previous)


def test_rollback_of_the_first_rollout_returns_to_the_bundle_before_it() -> None:
    first = _rollout(1, "/b", previous="/a")
    target = rollback_target([first])
    assert (target.revision, target.bundle_uri) == (0, "/a")
    restored = _rollout(2, "/a", restores=0)
    with pytest.raises(ConfigError, match="already restored the bundle the fleet served before revision 1"):
        rollback_target([first, restored])
    later = _rollout(3, "/c")
    assert rollback_target([first, restored, later]).bundle_uri == "/a"  # back from 3: what 2 served
    refused = _rollout(2, "/broken")
    assert rollback_target([first, refused], refused={2}).bundle_uri == "/a"
    with pytest.raises(ConfigError, match="recorded no earlier bundle"):
        rollback_target([_rollout(1, "/b")])  # published while no worker reported a bundle


def test_a_worker_is_named_by_its_stable_identity(monkeypatch) -> None:
    monkeypatch.delenv("MEMEGUARD_INSTANCE_ID", raising=False)
    assert default_worker_id() == socket.gethostname()
    monkeypatch.setenv("MEMEGUARD_INSTANCE_ID", "pod-7")
    assert default_worker_id() == "pod-7"


def test_silent_members_expire() -> None:
    now = datetime.now(UTC)
    st = WorkerStatus(worker_id="w", state="serving", model_version="m", heartbeat_s=15, updated_at=now)
    assert alive(st, now)
    assert not alive(st.model_copy(update={"updated_at": now - timedelta(seconds=46)}), now)
    assert not alive(st.model_copy(update={"state": "stopped"}), now)


def _statuses(bootstrap: str, topic: str) -> list[dict]:
    return [json.loads(r.value) for r in read_topic(bootstrap, topic, timeout_s=30) if r.value]


@pytest.mark.integration
def test_rollback_after_the_first_rollout_and_a_restarted_worker(stack, worker_factory, tiny_bundle, bundle_b,  # noqa: F811
                                                                 topics, monkeypatch, capsys) -> None:
    control = f"control-{topics.group}"
    monkeypatch.setenv("MEMEGUARD_KAFKA_BOOTSTRAP", stack.bootstrap)
    monkeypatch.setenv("MEMEGUARD_CONTROL_TOPIC", control)
    fleet = {"MEMEGUARD_CONTROL_TOPIC": control, "MEMEGUARD_FLEET_HEARTBEAT_S": "2",
             "MEMEGUARD_INSTANCE_ID": "pod-a"}  # no MEMEGUARD_WORKER_ID: the identity names it
    worker = worker_factory(**fleet).start()
    s = KafkaSettings()
    version_a = model_version_of(ModelBundle.load(tiny_bundle))

    # Item 2: a clean stop says `stopped`; the restarted worker keeps its name, so the fleet is one worker.
    assert worker.stop() == 0
    last = [st for st in _statuses(stack.bootstrap, f"{control}.status") if st["worker_id"] == "pod-a"][-1]
    assert last["state"] == "stopped"
    worker = worker_factory(**fleet).start()

    # Item 1: the first rollout records the bundle the fleet served; rollback returns to it.
    assert memeguard(["rollout", str(bundle_b), "--timeout", "60", "--expect", "1"]) == 0
    report = wait_for_fleet(s, 1, 30, expect=1)
    assert set(report.statuses) == {"pod-a"}  # not pod-a plus a ghost of its previous process
    assert report.statuses["pod-a"].bundle_uri == str(bundle_b.resolve())
    assert _verdict_versions(stack, topics, 4) == {"2.0.0-b"}
    capsys.readouterr()
    assert memeguard(["rollback", "--timeout", "60", "--expect", "1"]) == 0
    assert "the bundle served before revision 1" in capsys.readouterr().out
    report = wait_for_fleet(s, 2, 30, expect=1)
    assert (report.statuses["pod-a"].revision, report.statuses["pod-a"].model_version) == (2, version_a)
    assert _verdict_versions(stack, topics, 4) == {ModelBundle.load(tiny_bundle).manifest.version}
    assert memeguard(["rollback", "--no-wait"]) == 2  # nothing before that
    assert "already restored" in " ".join(capsys.readouterr().err.split())
    assert worker.stop() == 0
