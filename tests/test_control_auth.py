"""Control commands are authentic and safe (issue 27, item 6): HMAC-signed with MEMEGUARD_CONTROL_KEY, refused
(counted, logged, never acted on) when they do not verify, replays refused, and a `reload` re-points the
watched bundle path only once the named bundle passed its checks. A real worker on the real broker, plus the
pieces in process."""

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Producer

from consumer.cli import main as memeguard
from consumer.core.bundle import MANIFEST, ModelBundle
from consumer.core.runtime import BundleRuntime
from consumer.devinfra.stack import free_port
from consumer.errors import ConfigError
from consumer.kafka.topics import ensure_topics
from consumer.worker.control import ControlAuth, ControlCommand, encode_command, send_command
from consumer.worker.hot_reload import BundleWatcher
from exporters.testing import write_tiny_bundle
from schemas import Verdict
from tests.kafka_helpers import produce_events, wait_outputs
from tests.memes import dev_events
from tests.test_hot_reload import _corrupt_golden, _point, _wait_ready

KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def bundle_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Other weights and another semantic version, so that verdicts (ModelInfo.version) tell A and B apart."""
    root = write_tiny_bundle(tmp_path_factory.mktemp("control-b") / "b", seed=1)
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["version"] = "2.0.0-b"
    (root / MANIFEST).write_text(json.dumps(manifest))
    return root


# --- in process --------------------------------------------------------------------------------------

def test_signed_commands_verify_and_anything_else_is_refused() -> None:
    auth = ControlAuth.of("127.0.0.1:1", KEY)
    command = ControlCommand(action="reload", bundle_path="/srv/bundles/v7")
    value = encode_command("ctl", command, KEY)
    got, result = auth.read("ctl", value)
    assert result == "verified" and got is not None and got.bundle_path == "/srv/bundles/v7" and got.command_id
    assert auth.read("ctl", encode_command("ctl", command, None)) == (None, "unsigned")
    assert auth.read("ctl", encode_command("ctl", command, "another-key-of-32-bytes-........")) == (None, "bad_signature")
    assert auth.read("other-topic", value) == (None, "bad_signature")  # bound to the topic it was signed for
    doc = json.loads(value)
    doc["bundle_path"] = "/tmp/evil"  # the signature of the real command on another path
    assert auth.read("ctl", json.dumps(doc).encode()) == (None, "bad_signature")
    for junk in (None, b"", b"\xff", b"[]", b"{", b"[" * 100_000, b'{"revision": 1' + b"0" * 5000 + b"}",
                 b'{"signature": "' + b"0" * 64 + b'", "x": NaN}', b"{}" + b" " * 70_000):
        assert auth.read("ctl", junk)[0] is None
    # A signed record that is not a command (no command_id, or not the schema) is refused too.
    unsigned_doc = {"action": "reload", "bundle_path": "/b"}
    from consumer.worker.control import canonical, signature_of

    no_id = canonical({**unsigned_doc, "signature": signature_of(KEY.encode(), "ctl", unsigned_doc)})
    assert auth.read("ctl", no_id) == (None, "invalid")


def test_without_a_key_unsigned_commands_only_on_a_loopback_broker() -> None:
    value = encode_command("ctl", ControlCommand(action="reload", bundle_path="/b"), None)
    assert ControlAuth.of("127.0.0.1:19092", None).read("ctl", value)[1] == "unchecked"
    assert ControlAuth.of("kafka.prod.example:9092", None).read("ctl", value) == (None, "unsigned")
    with pytest.raises(ConfigError, match="MEMEGUARD_CONTROL_KEY"):  # refused before any broker is asked
        send_command("kafka.prod.example:9092", "ctl", ControlCommand(action="reload", bundle_path="/b"), None)


def test_a_refused_reload_leaves_the_watched_path_watching(tiny_bundle: Path, bundle_b: Path, tmp_path: Path) -> None:
    link = tmp_path / "current"
    link.symlink_to(tiny_bundle)
    watcher = BundleWatcher(link, current=BundleRuntime.load(link), poll_interval_s=0.05).start()
    try:
        watcher.request_reload(tmp_path / "nowhere")
        assert watcher.wait_idle(30) and watcher.status.rejected == 1 and watcher.take_ready() is None
        assert watcher.path == link
        # The right bundle under the wrong announced fingerprint (another bundle copied to the announced path).
        watcher.request_reload(bundle_b, expect_sha256="0" * 64)
        assert watcher.wait_idle(30) and watcher.status.rejected == 2 and watcher.take_ready() is None
        assert "fingerprint" in (watcher.status.last_error or "") and watcher.path == link
        _point(link, bundle_b)  # the real bundle path still reloads
        new = _wait_ready(watcher, 30)
        assert new is not None and new.bundle.root == bundle_b.resolve()
        # A reload that passes re-points the watch (the original `reload` semantics).
        watcher.request_reload(tiny_bundle, expect_sha256=ModelBundle.load(tiny_bundle).fingerprint)
        assert watcher.wait_idle(30) and watcher.take_ready() is not None and watcher.path == tiny_bundle
    finally:
        watcher.stop()


# --- a real worker on the real broker --------------------------------------------------------------

def _verdict_versions(stack, topics, n: int) -> set[str]:
    events = dev_events(n)
    produce_events(stack.bootstrap, topics.input, events)
    ids = {e.event_id for e in events}
    outs = [o for o in wait_outputs(stack.bootstrap, topics, ids, timeout_s=60) if o.event_id in ids]
    assert {o.event_id for o in outs} == ids and all(isinstance(o, Verdict) for o in outs), outs
    return {o.model.version for o in outs}


def _produce(bootstrap: str, topic: str, *values: bytes | None) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for v in values:
        producer.produce(topic, value=v)
    assert producer.flush(10) == 0


def _control_counts(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {m[0]: float(m[1]) for m in re.findall(r'^memeguard_control_commands_total\{result="(\w+)"\} (\S+)$',
                                                   text, re.M)}


def _wait_counts(port: int, want: dict[str, float], worker, timeout_s: float = 60) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            counts = _control_counts(port)
        except OSError:
            counts = {}
        if all(counts.get(k, 0) >= v for k, v in want.items()):
            return counts
        assert worker.proc.poll() is None, worker.log()
        assert time.monotonic() < deadline, f"control counts {counts}, waiting for {want}\n{worker.log()}"
        time.sleep(0.2)


def _wait_log(worker, text: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in worker.log_path.read_text(errors="replace"):
        assert worker.proc.poll() is None, worker.log()
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{worker.log()}"
        time.sleep(0.2)


@pytest.mark.integration
def test_a_worker_acts_only_on_verified_commands_and_keeps_watching_its_path(
        stack, worker_factory, tiny_bundle, bundle_b, topics, tmp_path, monkeypatch, capsys) -> None:
    control = f"control-{topics.group}"
    ensure_topics(stack.bootstrap, [control], 1)
    version_a = ModelBundle.load(tiny_bundle).manifest.version
    # History a worker reads at start: a forged rollout far ahead of any real revision.
    forged = ControlCommand(action="rollout", revision=10**9, bundle_uri=str(bundle_b), command_id="forged")
    _produce(stack.bootstrap, control, encode_command(control, forged, None))
    link = tmp_path / "current"
    link.symlink_to(tiny_bundle)
    port = free_port()
    worker = worker_factory(MEMEGUARD_BUNDLE_PATH=str(link), MEMEGUARD_CONTROL_TOPIC=control,
                            MEMEGUARD_CONTROL_KEY=KEY, MEMEGUARD_METRICS_PORT=str(port),
                            MEMEGUARD_BUNDLE_POLL_S="0.5", MEMEGUARD_FLEET_HEARTBEAT_S="2").start()
    _wait_counts(port, {"unsigned": 1}, worker)

    # 1. Reloads naming a valid bundle, but unsigned, signed with another key, or with a signature lifted
    #    from another command; and bytes that are no command at all. None is acted on.
    to_b = ControlCommand(action="reload", bundle_path=str(bundle_b))
    lifted = json.loads(encode_command(control, ControlCommand(action="reload", bundle_path=str(link)), KEY))
    lifted["bundle_path"] = str(bundle_b)
    _produce(stack.bootstrap, control, encode_command(control, to_b, None),
             encode_command(control, to_b, "another-key-of-32-bytes-........"),
             json.dumps(lifted).encode(), b"\xff{", None)
    counts = _wait_counts(port, {"unsigned": 2, "bad_signature": 2, "invalid": 2}, worker)
    assert counts.get("verified", 0) == 0
    assert _verdict_versions(stack, topics, 4) == {version_a}
    assert "control record refused" in worker.log_path.read_text()

    # 2. A signed reload of a bundle that fails its golden set: refused; its replay is refused as such.
    broken = _corrupt_golden(tiny_bundle, tmp_path / "broken")
    signed = encode_command(control, ControlCommand(action="reload", bundle_path=str(broken)), KEY)
    _produce(stack.bootstrap, control, signed)
    _wait_log(worker, "reload rejected")
    _produce(stack.bootstrap, control, signed)
    counts = _wait_counts(port, {"verified": 1, "replayed": 1}, worker)
    assert counts["verified"] == 1
    # ... and the real bundle path still reloads: re-point it and verdicts come from B.
    _point(link, bundle_b)
    deadline = time.monotonic() + 60
    while (versions := _verdict_versions(stack, topics, 2)) != {"2.0.0-b"}:
        assert time.monotonic() < deadline, versions  # the swap happens between batches
    assert worker.proc.poll() is None

    # 3. `memeguard rollout` signs with the same key: revision 1 (the forged 10**9 does not count), applied.
    monkeypatch.setenv("MEMEGUARD_KAFKA_BOOTSTRAP", stack.bootstrap)
    monkeypatch.setenv("MEMEGUARD_CONTROL_TOPIC", control)
    monkeypatch.setenv("MEMEGUARD_CONTROL_KEY", KEY)
    capsys.readouterr()
    assert memeguard(["rollout", str(tiny_bundle), "--timeout", "60", "--expect", "1"]) == 0
    assert capsys.readouterr().out.startswith("revision 1:")
    assert _verdict_versions(stack, topics, 3) == {version_a}
    assert _control_counts(port)["verified"] == 2

