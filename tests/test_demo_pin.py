"""`memeguard demo` serves its own bundle (issue 29 item 3): a rollout of another bundle on the dev control topic
does not reach the demo's worker. Built from the pieces consumer/demo/run.py uses (its worker start, produce and
collect), on the real broker, with the tiny bundle instead of the default model."""

import json
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from consumer.core.bundle import MANIFEST
from consumer.demo.produce import produce_events, read_semeval, to_events
from consumer.demo.run import pinned_bundle, start_worker
from consumer.kafka.outputs import collect
from consumer.kafka.topics import prepare_topics
from consumer.settings import KafkaSettings, WorkerSettings
from consumer.worker.rollout import roll_out, rollouts
from exporters.testing import write_tiny_bundle
from schemas import Verdict
from tests.memes import SEMEVAL


@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Other weights and another version, so that a verdict's ModelInfo.version tells which bundle served it."""
    root = write_tiny_bundle(tmp_path_factory.mktemp("demo-pin") / "other", seed=1)
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["version"] = "9.9.9-rolled-out"
    (root / MANIFEST).write_text(json.dumps(manifest))
    return root


@pytest.mark.integration
def test_a_rollout_on_the_dev_control_topic_does_not_change_what_the_demo_serves(
        stack, tiny_bundle, other_bundle, topics, tmp_path, monkeypatch) -> None:
    control = f"control-{topics.group}"
    for name, value in {"KAFKA_BOOTSTRAP": stack.bootstrap, "REDIS_URL": stack.redis_url,
                        "BUNDLE_PATH": str(tiny_bundle), "CONTROL_TOPIC": control, "INPUT_TOPIC": topics.input,
                        "OUTPUT_TOPIC": topics.output, "DLQ_TOPIC": topics.dlq, "GROUP_ID": topics.group,
                        "TOPIC_PARTITIONS": "1", "INTRA_OP_THREADS": "1", "MAX_WAIT_S": "0.1",
                        "FILE_ROOT": str(SEMEVAL.parent), "LOG_FORMAT": "json"}.items():
        monkeypatch.setenv(f"MEMEGUARD_{name}", value)
    # The dev fleet moved on: revision 1 on the control topic is another bundle.
    command = roll_out(KafkaSettings(), other_bundle.as_uri())
    assert [c.revision for c in rollouts(stack.bootstrap, control)] == [command.revision] == [1]

    settings = WorkerSettings()
    prepare_topics(settings, [settings.input_topic, settings.output_topic, settings.dlq_topic])
    line = pinned_bundle(settings)
    assert str(tiny_bundle) in line and "pinned" in line and control in line and "rolled-out" not in line
    worker, log_path = start_worker(settings, tmp_path)
    try:
        sources = read_semeval(SEMEVAL / "dev.json")[:4]
        events = list(to_events(sources, uuid.uuid4().hex[:8], inline=False, with_labels=False))
        produce_events(settings.kafka_bootstrap, settings.input_topic, events)
        outcomes = list(collect(settings.kafka_bootstrap, settings.output_topic, settings.dlq_topic,
                                {e.event_id for e in events}, timeout_s=120))
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
    assert len(outcomes) == 4 and all(isinstance(o, Verdict) for o in outcomes), log_path.read_text()[-2000:]
    tiny_version = json.loads((tiny_bundle / MANIFEST).read_text())["version"]
    assert {o.model.version for o in outcomes} == {tiny_version}, log_path.read_text()[-2000:]
