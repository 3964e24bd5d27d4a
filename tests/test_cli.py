"""What a new user meets first: the help, list settings, `produce` and `tail`, the example alert rules, the JSON
logs, and health endpoints that answer while the worker still waits for its broker."""

import json
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from consumer.alert.rules import AlertConfig
from consumer.cli import build_parser, main
from consumer.devinfra.stack import free_port
from consumer.kafka.topics import ensure_topics
from consumer.ops.logs import JsonFormatter
from consumer.settings import WorkerSettings
from schemas import TECHNIQUES, Decision, ModelInfo, TechniqueScore, Verdict
from tests.kafka_helpers import produce_raw, read_json_topic

REPO = Path(__file__).resolve().parents[1]


def test_top_level_help_lists_every_command_and_speaks_memeguard():
    text = build_parser().format_help()
    for command in ("worker", "produce", "tail", "evaluate", "replay", "alert", "review", "hash-password",
                    "train", "evaluate-run", "export", "bundle"):
        assert f"    {command}" in text, command
    assert "python -m" not in text
    assert text.startswith("usage: memeguard ")


def test_evaluate_usage_says_memeguard(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert capsys.readouterr().out.startswith("usage: memeguard evaluate ")


@pytest.mark.parametrize("raw, expected", [
    ("ocr,faces", ["ocr", "faces"]),
    (" ocr , faces ,", ["ocr", "faces"]),
    ('["ocr", "faces"]', ["ocr", "faces"]),
    ("", []),
])
def test_list_settings_accept_commas_or_json(monkeypatch, raw, expected):
    monkeypatch.setenv("MEMEGUARD_ENRICH_STAGES", raw)
    monkeypatch.setenv("MEMEGUARD_IMAGE_FORMATS", "JPEG, PNG")
    monkeypatch.setenv("MEMEGUARD_FETCH_ALLOWED_NETWORKS", "127.0.0.1/32,::1/128")
    s = WorkerSettings()
    assert s.enrich_stages == expected
    assert s.image_formats == ["JPEG", "PNG"]
    assert s.fetch_allowed_networks == ["127.0.0.1/32", "::1/128"]


@pytest.mark.parametrize("name, raw, message", [
    ("MEMEGUARD_IMAGE_FORMATS", "JPEG,BMP", "MEMEGUARD_IMAGE_FORMATS: item 2: Input should be"),
    ("MEMEGUARD_ENRICH_STAGES", '["ocr"', "MEMEGUARD_ENRICH_STAGES:"),
])
def test_a_bad_list_setting_is_one_line_naming_it(monkeypatch, capsys, name, raw, message):
    monkeypatch.setenv(name, raw)
    assert main(["worker"]) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert message in err and "Traceback" not in err


def test_produce_fails_without_its_images(tmp_path, capsys):
    assert main(["produce", "--images", str(tmp_path / "no-such-folder")]) == 2
    assert "does not exist" in " ".join(capsys.readouterr().err.split())  # rich wraps long temp paths
    data = tmp_path / "memes.json"
    data.write_text(json.dumps([{"id": "1", "text": "t", "image": "gone.png"}]))
    (tmp_path / "images").mkdir()
    assert main(["produce", "--data", str(data)]) == 2
    assert "1 of 1 images are missing" in " ".join(capsys.readouterr().err.split())


def test_produce_exits_non_zero_when_nothing_was_published(capsys):
    assert main(["produce", "--limit", "0"]) == 1  # no broker needed: nothing is sent
    assert "nothing was published" in capsys.readouterr().err


def test_example_alert_rules_load_and_post_nowhere():
    config = AlertConfig.from_file(REPO / "ops" / "alert-rules.example.yaml")
    assert {r.name for r in config.rules} == {"blocked", "smears-high", "repeat-offender"}
    assert config.destinations == []  # out of the box the alerts go to the topic, not to a dead webhook


def test_json_log_lines_keep_their_field_names():
    record = logging.LogRecord("consumer.x", logging.WARNING, __file__, 1, "broker %s down", ("b:9092",), None)
    record.attempt = 3
    record.path = Path("/bundle")
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "warning" and line["logger"] == "consumer.x" and line["msg"] == "broker b:9092 down"
    assert line["attempt"] == 3 and line["path"] == "/bundle"
    assert datetime.fromisoformat(line["ts"]).tzinfo is not None


def verdict(post: str, decision: str = "allow") -> Verdict:
    techniques = [TechniqueScore(technique=t, score=0.1, threshold=0.5, flagged=False) for t in TECHNIQUES]
    return Verdict(event_id=f"e-{post}", post_id=post, content_hash="h" * 64, model=ModelInfo(name="m", version="1"),
                   techniques=techniques, decision=Decision(decision), created_at=datetime.now(UTC))


def cli_env(stack, **settings: str) -> dict[str, str]:
    env = dict(os.environ, MEMEGUARD_KAFKA_BOOTSTRAP=stack.bootstrap, MEMEGUARD_REDIS_URL=stack.redis_url,
               COLUMNS="200")
    env.update({f"MEMEGUARD_{k.upper()}": v for k, v in settings.items()})
    return env


@pytest.mark.integration
def test_tail_follow_prints_only_new_verdicts(stack, topics):
    ensure_topics(stack.bootstrap, [topics.output, topics.dlq], partitions=2)
    produce_raw(stack.bootstrap, topics.output, [(b"old", verdict("old-post").model_dump_json().encode())])
    tail = subprocess.Popen([sys.executable, "-m", "consumer.cli", "tail", "--follow", "--max", "1", "--deadline", "60"],
                            env=cli_env(stack, output_topic=topics.output, dlq_topic=topics.dlq), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 40
        n = 0
        # It follows from the moment it started, whenever that was: keep publishing until it prints one.
        while tail.poll() is None and time.monotonic() < deadline:
            n += 1
            produce_raw(stack.bootstrap, topics.output, [(b"new", verdict(f"new-post-{n}").model_dump_json().encode())])
            time.sleep(0.5)
        out = tail.communicate(timeout=10)[0]
    finally:
        tail.kill()
    assert tail.returncode == 0, out
    assert "new-post-" in out and "old-post" not in out


@pytest.mark.integration
def test_example_alert_rules_run_out_of_the_box(stack, topics):
    alerts = f"alerts-{topics.group}"
    ensure_topics(stack.bootstrap, [topics.output], partitions=2)
    blocked = verdict(f"blocked-{topics.group}", "block")
    produce_raw(stack.bootstrap, topics.output, [(b"p", blocked.model_dump_json().encode())])
    done = subprocess.run([sys.executable, "-m", "consumer.cli", "alert", "--rules", "ops/alert-rules.example.yaml",
                           "--exit-when-idle", "2"], cwd=REPO, capture_output=True, text=True, timeout=90,
                          env=cli_env(stack, output_topic=topics.output, alerts_topic=alerts,
                                      alerts_dlq_topic=f"{alerts}-dlq", alert_group_id=f"alert-{topics.group}",
                                      log_format="text"))
    assert done.returncode == 0, done.stderr[-3000:]
    raised = read_json_topic(stack.bootstrap, alerts)
    assert [(a["rule"], a["post_id"]) for a in raised] == [("blocked", f"blocked-{topics.group}")]


def test_health_endpoints_answer_while_the_worker_waits_for_the_broker(tmp_path):
    """Kubernetes probes a pod from its start: a worker waiting for its broker is alive but not ready."""
    port, closed = free_port(), free_port()
    env = dict(os.environ, MEMEGUARD_KAFKA_BOOTSTRAP=f"127.0.0.1:{closed}", MEMEGUARD_METRICS_PORT=str(port),
               MEMEGUARD_STARTUP_TIMEOUT_S="60", MEMEGUARD_REDIS_URL="", MEMEGUARD_BUNDLE_PATH=str(tmp_path / "none"))
    worker = subprocess.Popen([sys.executable, "-m", "consumer.cli", "worker"], env=env, cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        live = None
        while time.monotonic() < deadline and worker.poll() is None:
            try:
                live = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert live is not None and live.status_code == 200, "no /healthz while waiting for the broker"
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert ready.status_code == 503
        assert "unreachable" in ready.json()["checks"]["broker"]
    finally:
        worker.kill()
        worker.wait(10)
