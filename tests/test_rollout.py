"""Fleet rollout: `memeguard rollout` / `rollback` on the control topic, real worker processes on the real broker,
their answers on the status topic; plus the revision ordering of a worker's FleetMember."""

import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from confluent_kafka.admin import ConfigResource

from consumer.cli import main as memeguard
from consumer.core.bundle import MANIFEST, ModelBundle
from consumer.core.runtime import BundleRuntime
from consumer.errors import ConfigError
from consumer.kafka.topics import admin, ensure_topics
from consumer.ops.metrics import PipelineMetrics
from consumer.settings import KafkaSettings
from consumer.worker.control import ControlCommand, bundle_path_of
from consumer.worker.fleet import FleetMember
from consumer.worker.rollout import model_version_of, rollback_target, wait_for_fleet
from exporters.testing import write_tiny_bundle
from schemas import Verdict
from tests.kafka_helpers import produce_events, wait_outputs
from tests.memes import dev_events
from tests.test_hot_reload import _corrupt_golden


@pytest.fixture(scope="module")
def bundle_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Other weights and another semantic version, so that verdicts (ModelInfo.version) tell A and B apart."""
    root = write_tiny_bundle(tmp_path_factory.mktemp("rollout-b") / "b", seed=1)
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["version"] = "2.0.0-b"
    (root / MANIFEST).write_text(json.dumps(manifest))
    return root


def _verdict_versions(stack, topics, n: int) -> set[str]:
    events = dev_events(n)
    produce_events(stack.bootstrap, topics.input, events)
    ids = {e.event_id for e in events}
    outs = [o for o in wait_outputs(stack.bootstrap, topics, ids, timeout_s=60) if o.event_id in ids]
    assert {o.event_id for o in outs} == ids
    assert all(isinstance(o, Verdict) for o in outs), outs
    return {o.model.version for o in outs}  # of these events only: the topic holds earlier verdicts too


def _cleanup_policy(bootstrap: str, topic: str) -> str:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    client = admin(bootstrap)  # kept alive until the result is in (a destroyed handle fails the future)
    configs = client.describe_configs([resource])[resource].result(timeout=10)
    return configs["cleanup.policy"].value


@pytest.mark.integration
def test_rollout_rejection_rollback_and_a_late_worker(stack, worker_factory, tiny_bundle, bundle_b, topics,
                                                       tmp_path, monkeypatch, capsys) -> None:
    control = f"control-{topics.group}"
    monkeypatch.setenv("MEMEGUARD_KAFKA_BOOTSTRAP", stack.bootstrap)
    monkeypatch.setenv("MEMEGUARD_CONTROL_TOPIC", control)
    fleet = {"MEMEGUARD_CONTROL_TOPIC": control, "MEMEGUARD_FLEET_HEARTBEAT_S": "2"}
    workers = [worker_factory(MEMEGUARD_WORKER_ID=f"w{i}", **fleet) for i in (1, 2)]
    for w in workers:
        w.start(wait_ready=False)
    for w in workers:
        w.wait_ready()
    s = KafkaSettings()
    version_a = model_version_of(ModelBundle.load(tiny_bundle))
    version_b = model_version_of(ModelBundle.load(bundle_b))
    assert version_b == BundleRuntime.load(bundle_b).version  # the CLI names the model as the worker will

    # 1. Roll out B: both workers validate it and answer; verdicts from then on carry B.
    assert memeguard(["rollout", bundle_b.as_uri(), "--timeout", "60", "--expect", "2"]) == 0
    report = wait_for_fleet(s, 1, 30, expect=2)
    assert {w: (st.revision, st.model_version) for w, st in report.statuses.items()} == {
        "w1": (1, version_b), "w2": (1, version_b)}
    assert _verdict_versions(stack, topics, 8) == {"2.0.0-b"}
    assert _cleanup_policy(stack.bootstrap, f"{control}.status") == "compact"  # latest status per worker kept

    # 2. A bundle whose golden outputs do not match: both refuse it, keep serving B, and the command fails.
    broken = _corrupt_golden(tiny_bundle, tmp_path / "broken")
    capsys.readouterr()
    assert memeguard(["rollout", str(broken), "--timeout", "60", "--expect", "2"]) == 1
    assert "rejected" in capsys.readouterr().out
    report = wait_for_fleet(s, 2, 30, expect=2)
    for st in report.statuses.values():
        assert (st.state, st.revision, st.model_version, st.refused) == ("rejected", 1, version_b, [2])
        assert "golden" in (st.error or "")
    assert len(report.statuses) == 2

    # 3. Roll out A, then roll back: the refused revision 2 is skipped, revision 4 re-publishes B (revision 1).
    assert memeguard(["rollout", str(tiny_bundle), "--timeout", "60", "--expect", "2"]) == 0
    assert _verdict_versions(stack, topics, 4) == {ModelBundle.load(tiny_bundle).manifest.version}
    assert memeguard(["rollback", "--timeout", "60", "--expect", "2"]) == 0
    report = wait_for_fleet(s, 4, 30, expect=2)
    assert {st.model_version for st in report.statuses.values()} == {version_b} and report.all_ok
    assert version_a != version_b
    assert _verdict_versions(stack, topics, 6) == {"2.0.0-b"}

    # 4. A worker started now reads the control topic's history and comes up on revision 4 (B).
    late = worker_factory(MEMEGUARD_WORKER_ID="w3", **fleet).start()
    assert late.proc.poll() is None
    report = wait_for_fleet(s, 4, 30, expect=3)
    assert (report.statuses["w3"].state, report.statuses["w3"].revision,
            report.statuses["w3"].model_version) == ("serving", 4, version_b)


def test_bundle_uri_schemes(tmp_path: Path) -> None:
    assert bundle_path_of(str(tmp_path)) == tmp_path
    assert bundle_path_of(tmp_path.as_uri()) == tmp_path
    for uri in ("s3://bucket/bundle", "https://example.org/b.tar", "file://otherhost/b"):
        with pytest.raises(ConfigError, match="file://"):
            bundle_path_of(uri)
    with pytest.raises(ValueError, match="revision"):
        ControlCommand(action="rollout", bundle_uri="/b")


def test_rollout_refuses_a_corrupt_bundle_before_publishing(tiny_bundle: Path, tmp_path: Path, monkeypatch) -> None:
    import shutil

    bad = Path(shutil.copytree(tiny_bundle, tmp_path / "bad"))
    (bad / "model.onnx").write_bytes(b"not onnx")
    monkeypatch.setenv("MEMEGUARD_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # never reached: refused before
    from consumer.worker.rollout import command_for

    with pytest.raises(Exception, match="sha256"):
        command_for(str(bad), 1)


def _rollout(revision: int, uri: str = "/bundles/x", restores: int | None = None, version: str | None = None):
    return ControlCommand(action="rollout", revision=revision, bundle_uri=uri, restores=restores, model_version=version)


def test_rollback_target_walks_back_and_skips_refused_revisions() -> None:
    a, b, broken = _rollout(1, "/a"), _rollout(2, "/b"), _rollout(3, "/broken")
    assert rollback_target([a, b]).revision == 1
    assert rollback_target([a, b, broken], refused={3}).revision == 1  # 3 never served: back from 2
    back = _rollout(4, "/a", restores=1)
    with pytest.raises(ConfigError, match="first rollout"):
        rollback_target([a, b, back])  # 4 restored 1: there is nothing before it
    c = _rollout(5, "/c")
    assert rollback_target([a, b, back, c]).bundle_uri == "/a"
    with pytest.raises(ConfigError, match="Nothing to roll back"):
        rollback_target([])


class _Watcher:
    """Stands in for BundleWatcher: records what the fleet member asks it to load."""

    def __init__(self) -> None:
        self.requests: list[tuple[Path, int]] = []
        self.on_ready = self.on_rejected = self.on_swapped = None

    def request_reload(self, path, *, tag=None, expect_version=None) -> None:  # noqa: ANN001
        self.requests.append((path, tag.revision))

    def wait_idle(self, timeout: float = 30.0) -> bool:
        return True


def test_fleet_member_orders_by_revision_only(stack) -> None:
    topic = f"status-{uuid.uuid4().hex[:8]}"
    ensure_topics(stack.bootstrap, [topic], 1)
    watcher, metrics = _Watcher(), PipelineMetrics()
    member = FleetMember(stack.bootstrap, "unused-control", topic, watcher, SimpleNamespace(version="m@1+aa"),
                         metrics, worker_id="t1")
    assert member.apply(_rollout(3, "/b3"))
    assert not member.apply(_rollout(3, "/b3-again"))  # a duplicate revision
    assert not member.apply(_rollout(2, "/b2"))  # older than the one applied
    assert watcher.requests == [(Path("/b3"), 3)]
    watcher.on_ready(SimpleNamespace(version="m@3+bb"), _rollout(3, "/b3"))
    assert (member.status().state, member.status().revision) == ("ready", 3)
    watcher.on_swapped(SimpleNamespace(version="m@3+bb"), _rollout(3, "/b3"))
    assert member.status().state == "serving" and metrics.registry.get_sample_value("memeguard_fleet_revision") == 3
    # A newer revision whose model already serves switches without loading anything.
    assert member.apply(_rollout(4, "/b3-copy", version="m@3+bb"))
    assert len(watcher.requests) == 1 and member.status().revision == 4
    # A refused one leaves revision and model as they were.
    assert member.apply(_rollout(5, "/b5"))
    watcher.on_rejected("golden mismatch", _rollout(5, "/b5"))
    st = member.status()
    assert (st.state, st.revision, st.model_version, st.refused, st.target_revision) == (
        "rejected", 4, "m@3+bb", [5], 5)
    history = [_rollout(1, "/b1"), _rollout(7, "/b7"), _rollout(6, "/b6")]
    member.on_history(history)  # at start: only the highest revision of the history is applied
    assert watcher.requests[-1] == (Path("/b7"), 7)


@pytest.mark.integration
def test_exactly_once_worker_follows_rollouts_and_plain_reloads(stack, worker_factory, tiny_bundle, bundle_b,
                                                                topics, monkeypatch) -> None:
    import time

    from consumer.worker.control import send_command
    from consumer.worker.rollout import live_statuses

    control = f"control-{topics.group}"
    monkeypatch.setenv("MEMEGUARD_KAFKA_BOOTSTRAP", stack.bootstrap)
    monkeypatch.setenv("MEMEGUARD_CONTROL_TOPIC", control)
    worker_factory(MEMEGUARD_CONTROL_TOPIC=control, MEMEGUARD_FLEET_HEARTBEAT_S="2", MEMEGUARD_WORKER_ID="eos",
                   MEMEGUARD_PROCESSING_GUARANTEE="exactly_once", MEMEGUARD_INSTANCE_ID="eos").start()
    assert memeguard(["rollout", str(bundle_b), "--timeout", "60", "--expect", "1"]) == 0
    assert _verdict_versions(stack, topics, 4) == {"2.0.0-b"}
    # The original `reload` action still works; the status then says no fleet revision serves.
    send_command(stack.bootstrap, control, ControlCommand(action="reload", bundle_path=str(tiny_bundle)))
    version_a = model_version_of(ModelBundle.load(tiny_bundle))
    deadline = time.monotonic() + 60
    while (st := live_statuses(KafkaSettings())["eos"]).model_version != version_a and time.monotonic() < deadline:
        _verdict_versions(stack, topics, 1)  # the swap happens between batches
    assert (st.model_version, st.revision, st.state) == (version_a, 0, "serving")
    assert _verdict_versions(stack, topics, 3) == {ModelBundle.load(tiny_bundle).manifest.version}
