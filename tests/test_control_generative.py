"""Property of the control-topic reader (issue 27, item 4 for the control reader): whatever an adversary writes
on the control topic (arbitrary keys, values and headers, tombstones, deep nesting, huge numbers, wrong
types, mutated commands, signatures lifted or made with another key), every record is validated, counted
once, and only a command signed with the fleet's key and fitting the schema is acted on; the reader never
raises and never stops. In process over many examples, then through the real ControlListener on the real
broker (fewer examples: each crosses Kafka)."""

import json
import time
import uuid

import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from consumer.kafka.topics import ensure_topics
from consumer.worker.control import (
    ACCEPTED,
    REFUSED,
    ControlAuth,
    ControlCommand,
    canonical,
    signature_of,
)
from consumer.worker.control_listener import ControlListener
from tests.generative import WRONG_TYPES, headers, hostile_text, json_docs, keys

KEY = b"generative-control-key-0123456789"
OTHER_KEY = b"not-the-fleet-key-0123456789abcd"
FIELDS = ["action", "bundle_path", "revision", "bundle_uri", "model_version", "bundle_sha256", "restores",
          "command_id", "issued_at", "issued_by", "signature", "unknown"]
HUGE_NUMBERS = [2**63 - 1, 2**63, -(2**63) - 1, 10**30, 10**300, -1, 0]


def valid_doc(n: str, action: str) -> dict:
    doc = {"action": action, "command_id": f"cmd-{n}", "issued_at": "2026-12-07T10:00:00Z"}
    if action == "reload":
        doc["bundle_path"] = f"/anchor/{n}"
    else:
        doc.update(revision=len(n) + 1, bundle_uri=f"/anchor/{n}", model_version="m@1+aa", bundle_sha256="a" * 64)
    return doc


field_values = st.one_of(hostile_text, WRONG_TYPES, json_docs, st.sampled_from(HUGE_NUMBERS),
                         st.integers(1, 2000).map(lambda n: json.loads("[" * n + "]" * n)),
                         st.sampled_from(["x" * 5000, "/" * 70_000, "a" * 64, "A" * 64, "reload", "rollout"]))


@st.composite
def mutated(draw, n: str) -> dict:
    doc = valid_doc(n, draw(st.sampled_from(["reload", "rollout"])))
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(FIELDS))
        if draw(st.booleans()):
            doc.pop(field, None)
        else:
            doc[field] = draw(field_values)
    return doc


def signed(doc: dict, key: bytes, topic: str) -> dict:
    try:
        return {**doc, "signature": signature_of(key, topic, doc)}
    except (ValueError, RecursionError):  # NaN / infinity / deep: no signer produces these
        return doc


def text(draw, doc: object) -> bytes | None:
    try:
        return json.dumps(doc, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):  # a huge int or deep nesting: written as raw text below instead
        return None


@st.composite
def control_value(draw, n: str, topic: str) -> tuple[bytes | None, bool]:
    """A record value and whether it is a command the fleet's key signed (an anchor that must be acted on)."""
    kind = draw(st.sampled_from(["anchor", "mutated", "mutated", "other_key", "lifted", "unsigned", "json",
                                 "bytes", "null", "nested", "huge", "wrong_top"]))
    if kind == "anchor":
        return canonical(signed(valid_doc(n, draw(st.sampled_from(["reload", "rollout"]))), KEY, topic)), True
    if kind == "mutated":
        doc = draw(mutated(n))
        return text(draw, signed(doc, KEY, topic) if draw(st.booleans()) else doc), False
    if kind == "other_key":
        return canonical(signed(valid_doc(n, "reload"), OTHER_KEY, topic)), False
    if kind == "lifted":  # a real signature on another command
        doc = signed(valid_doc(n, "reload"), KEY, topic)
        doc["bundle_path"] = draw(hostile_text)
        return text(draw, doc), False
    if kind == "unsigned":
        return canonical(valid_doc(n, "rollout")), False
    if kind == "json":
        return text(draw, draw(json_docs)), False
    if kind == "bytes":
        return draw(st.binary(max_size=200)), False
    if kind == "null":
        return None, False  # a tombstone
    if kind == "nested":
        depth = draw(st.sampled_from([100, 2_000, 50_000]))
        return draw(st.sampled_from([b"[" * depth + b"]" * depth, b'{"action":' * depth + b"1" + b"}" * depth,
                                     b"{" * depth])), False
    if kind == "huge":
        digits = draw(st.sampled_from([19, 20, 400, 5_000, 100_000]))
        field = draw(st.sampled_from([b"revision", b"restores", b"issued_at", b"signature"]))
        return b'{"action":"rollout","bundle_uri":"/b","' + field + b'":' + b"9" * digits + b"}", False
    return text(draw, draw(st.sampled_from([[valid_doc(n, "reload")], "reload", 1, None, True]))), False


def test_the_control_reader_takes_any_bytes_in_process() -> None:
    auth = ControlAuth(KEY, False)

    @seed(20261207)
    @settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data) -> None:
        value, anchor = data.draw(control_value("0", "memeguard.control"))
        command, result = auth.read("memeguard.control", value)
        assert result in ACCEPTED + REFUSED
        assert (command is not None) == (result == "verified")
        if anchor:
            assert result == "verified", value
        if command is not None:  # only what the key signed, and it fits the schema
            doc = json.loads(value)
            assert doc.pop("signature") == signature_of(KEY, "memeguard.control", doc)
            assert ControlCommand.model_validate(doc) == command and command.command_id

    run()


def produce(bootstrap: str, topic: str, records) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "message.max.bytes": 16 * 1024 * 1024})
    errors: list[str] = []
    for key, value, hdrs in records:
        producer.produce(topic, key=key, value=value, headers=hdrs,
                         on_delivery=lambda err, _msg: err and errors.append(str(err)))
    assert producer.flush(30) == 0 and not errors, errors


@st.composite
def batch(draw, topic: str, part: str) -> list[tuple[bytes | None, bytes | None, list, bool]]:
    n = draw(st.integers(15, 30))
    out = []
    for i in range(n):
        value, anchor = draw(control_value(f"{topic}-{part}{i}", topic))
        out.append((draw(keys), value, draw(headers), anchor))
    return out


@pytest.mark.integration
def test_generated_hostile_control_records_through_the_real_listener(stack) -> None:
    examples: list[int] = []

    @seed(20261207)
    @settings(max_examples=4, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data) -> None:
        topic = f"control-gen-{uuid.uuid4().hex[:8]}"
        ensure_topics(stack.bootstrap, [topic], 1)
        history, live = data.draw(batch(topic, "h")), data.draw(batch(topic, "l"))
        # A copy of a signed command already on the topic is a replay, whenever it comes.
        replays = [(None, value, [], False) for _k, value, _h, anchor in history if anchor][:2]
        live = live + replays
        got_history: list[ControlCommand] = []
        got_live: list[ControlCommand] = []

        def on_command(command: ControlCommand) -> None:
            got_live.append(command)
            if len(got_live) % 2:
                raise RuntimeError("a failing command handler")  # must not stop the listener

        produce(stack.bootstrap, topic, [r[:3] for r in history])
        listener = ControlListener(stack.bootstrap, topic, on_command, got_history.extend,
                                   ControlAuth(KEY, False)).start()
        try:
            assert listener.caught_up.wait(30)
            produce(stack.bootstrap, topic, [r[:3] for r in live])
            total = len(history) + len(live)
            deadline = time.monotonic() + 60
            while sum(v for k, v in listener.counts.items() if k != "failed") < total:
                assert time.monotonic() < deadline, (dict(listener.counts), total)
                time.sleep(0.05)
            assert listener._thread.is_alive()
            # Exactly what ControlAuth accepts, in topic order, each command_id once; every signed anchor.
            oracle, expected, seen = ControlAuth(KEY, False), [], set()
            for _key, value, _headers, _anchor in history + live:
                command, _ = oracle.read(topic, value)
                if command is not None and command.command_id not in seen:
                    seen.add(command.command_id)
                    expected.append(command.command_id)
            assert [c.command_id for c in got_history + got_live] == expected
            assert {json.loads(v)["command_id"] for _k, v, _h, a in history + live if a} <= set(expected)
            assert listener.counts["replayed"] >= len(replays)
            assert listener.counts["verified"] == len(expected)
            assert listener.counts["failed"] == (len(got_live) + 1) // 2
        finally:
            listener.stop()
        examples.append(total)

    run()
    assert len(examples) == 4


def command_docs(paths: list[str]) -> st.SearchStrategy[dict]:
    """Commands that fit the schema but name anything: what a careless key holder (or, without a key, anyone
    on a loopback broker) can send. Some name real bundles, most name nothing loadable."""
    where = st.one_of(hostile_text, st.sampled_from(HOSTILE_URIS + paths))
    return st.fixed_dictionaries({
        "action": st.sampled_from(["reload", "rollout"]),
        "bundle_path": st.one_of(st.none(), where),
        "revision": st.one_of(st.integers(1, 5), st.sampled_from([2**63 - 1, 10**12])),
        "bundle_uri": where,
        "model_version": st.one_of(st.none(), hostile_text),
        "bundle_sha256": st.one_of(st.none(), st.sampled_from(["0" * 64, "f" * 64])),
        "restores": st.one_of(st.none(), st.integers(1, 5)),
    })


HOSTILE_URIS = ["/tmp/a\x00b", "file:///x%00", "http://[::1", "file://evil.test/x", "s3://b/k", "file:", "",
                "/dev/zero", "/proc/self/environ", "/etc/passwd", "/" * 5000, "x" * 5000, "\udcff", "file:///\udcff",
                "../../../../etc", "/tmp"]


@pytest.mark.integration
def test_generated_commands_never_stop_a_workers_bundle_watcher(stack, tiny_bundle, tmp_path) -> None:
    """Whatever a verified command names, the worker's FleetMember and BundleWatcher keep going: every
    request ends loaded or refused, the loader and poller threads live, and the real bundle path still
    reloads afterwards."""
    from consumer.core.runtime import BundleRuntime
    from consumer.ops.metrics import PipelineMetrics
    from consumer.worker.fleet import FleetMember
    from consumer.worker.hot_reload import BundleWatcher
    from exporters.testing import write_tiny_bundle
    from tests.test_hot_reload import _point, _wait_ready

    other = write_tiny_bundle(tmp_path / "other", seed=2)
    link = tmp_path / "current"
    link.symlink_to(tiny_bundle)
    runtime = BundleRuntime.load(link)
    watcher = BundleWatcher(link, current=runtime, poll_interval_s=0.05).start()
    status = f"status-gen-{uuid.uuid4().hex[:8]}"
    ensure_topics(stack.bootstrap, [status], 1)
    member = FleetMember(stack.bootstrap, "unused-control", status, watcher, runtime, PipelineMetrics(),
                         worker_id="gen", key=KEY)
    try:
        @seed(20261207)
        @settings(max_examples=40, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(command_docs([str(tiny_bundle), str(other), other.as_uri()]))
        def run(doc) -> None:
            try:
                command = ControlCommand.model_validate(doc)
            except ValueError:  # a lone surrogate: never a command (ControlAuth.read says invalid)
                return
            member.on_command(command)
            assert watcher.wait_idle(60)
            assert all(t.is_alive() for t in watcher._threads), "a watcher thread died"
            watcher.take_ready()  # as the worker does between batches

        run()
        assert watcher.path in (link, tiny_bundle, other)  # only a bundle that loaded became the watched path
        watcher.request_reload(link)  # back to the real path, then it reloads when re-pointed
        assert watcher.wait_idle(60)
        watcher.take_ready()
        assert watcher.path == link
        _point(link, other)
        new = _wait_ready(watcher, 60)
        assert new is not None and new.bundle.root == other.resolve()
    finally:
        watcher.stop()
