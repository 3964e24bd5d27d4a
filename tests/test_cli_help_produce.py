"""Issue 29 items 8 and 7: the help says what each command is and does, `tail` reads any topic (newest N, JSON,
a pipe line by line), and `produce` refuses what would only become dead letters before it publishes."""

import io
import json
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from PIL import Image

from consumer.cli import build_parser, main
from consumer.demo.produce import read_folder
from consumer.devinfra.stack import free_port
from consumer.kafka.topics import ensure_topics
from tests.kafka_helpers import produce_raw

REPO = Path(__file__).resolve().parents[1]
# Registered by consumer/learning/cli.py (its own help) and the training stubs (their modules' help).
NOT_OURS = {"dataset", "calibrate", "shadow", "compare", "promote", "evaluate", "train", "evaluate-run", "export",
            "bundle"}


def env_for(stack=None, **settings: str) -> dict[str, str]:
    env = dict(os.environ, COLUMNS="200")
    if stack is not None:
        env |= {"MEMEGUARD_KAFKA_BOOTSTRAP": stack.bootstrap, "MEMEGUARD_REDIS_URL": stack.redis_url}
    env.update({f"MEMEGUARD_{k.upper()}": v for k, v in settings.items()})
    return env


def cli(*args: str, env: dict[str, str], timeout: float = 60, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "consumer.cli", *args], cwd=REPO, env=env, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


# --- item 8: help ---------------------------------------------------------------------------------------------

def test_hash_password_help_prints_help_and_hashes_nothing(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long enough password\n"))
    with pytest.raises(SystemExit) as done:
        main(["hash-password", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert out.startswith("usage: memeguard hash-password") and "USER" in out
    assert "scrypt$" not in out and "\"--help\"" not in out  # before: {"--help": "scrypt$…"}


def test_hash_password_still_hashes(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long enough password\n"))
    assert main(["hash-password", "alice"]) == 0
    assert json.loads(capsys.readouterr().out)["alice"].startswith("scrypt$")


def test_training_commands_help_shows_their_own_names():
    procs = {name: subprocess.Popen([sys.executable, "-m", "consumer.cli", name, "--help"], cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("evaluate-run", "bundle")}  # bundle's module imports torch: run both at once
    for name, proc in procs.items():
        out, errs = proc.communicate(timeout=180)
        assert proc.returncode == 0, errs[-2000:]
        assert out.startswith(f"usage: memeguard {name} "), out[:200]
        assert "memeguard evaluate " not in out and "build-default" not in out


def test_every_option_of_our_commands_has_help():
    parser = build_parser()
    subs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = []
    for name, sub in subs.choices.items():
        if name in NOT_OURS:
            continue
        for action in sub._actions:
            if action.dest != "help" and not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []
    top = [a for a in parser._actions if a.dest not in ("help", "command")]
    assert all(a.help for a in top)


# --- item 8: tail ---------------------------------------------------------------------------------------------

def _alerts(stack, topic: str, n: int) -> None:
    ensure_topics(stack.bootstrap, [topic], 1)
    for i in range(n):  # one at a time: each its own, later, timestamp
        produce_raw(stack.bootstrap, topic, [(f"k{i}".encode(), json.dumps({"alert_id": f"a{i}"}).encode())])


@pytest.mark.integration
def test_tail_reads_any_topic_newest_first_n_as_json(stack, topics):
    topic = f"alerts-{topics.group}"
    _alerts(stack, topic, 8)
    done = cli("tail", "--topic", topic, "--max", "5", "--json", env=env_for(stack))
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["alert_id"] for line in done.stdout.splitlines()] == ["a3", "a4", "a5", "a6", "a7"]
    plain = cli("tail", "--topic", topic, "--max", "2", env=env_for(stack))  # a pipe: one line per record
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert len(lines) == 2 and '"a6"' in lines[0] and '"a7"' in lines[1]


@pytest.mark.integration
def test_tail_follow_into_a_pipe_prints_each_record_as_it_comes(stack, topics):
    topic = f"alerts-{topics.group}"
    ensure_topics(stack.bootstrap, [topic], 2)
    tail = subprocess.Popen([sys.executable, "-m", "consumer.cli", "tail", "-f", "--topic", topic, "--json"],
                            cwd=REPO, env=env_for(stack), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "following" in tail.stderr.readline()  # assigned at the end: what comes next is printed
        produce_raw(stack.bootstrap, topic, [(b"k", json.dumps({"alert_id": "new"}).encode())])
        ready, _, _ = select.select([tail.stdout], [], [], 30)
        assert ready, "tail -f printed nothing into the pipe while it kept running"
        assert json.loads(tail.stdout.readline())["alert_id"] == "new"
        assert tail.poll() is None  # still following
    finally:
        tail.kill()
        tail.wait(10)


# --- item 7: produce ------------------------------------------------------------------------------------------

def _folder(path: Path, *names: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (8, 8), "red").save(path / name)
    return path


def test_produce_refuses_images_outside_the_file_root_before_publishing(tmp_path):
    folder = _folder(tmp_path / "memes", "a.png")
    closed = f"127.0.0.1:{free_port()}"  # no broker: the refusal must come before any attempt to publish
    done = cli("produce", "--folder", str(folder), env=env_for(kafka_bootstrap=closed, connect_timeout_s="1",
                                                                 file_root=str(REPO / "configs")))
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "MEMEGUARD_FILE_ROOT" in err and "--inline" in err and "forbidden_url" in err
    inline = cli("produce", "--folder", str(folder), "--inline", env=env_for(
        kafka_bootstrap=closed, connect_timeout_s="1", file_root=str(REPO / "configs")))
    assert inline.returncode == 2 and closed in inline.stderr  # --inline passes: the broker is next


def test_produce_rate_must_be_positive(capsys):
    for rate in ("-5", "0"):
        with pytest.raises(SystemExit) as done:
            main(["produce", "--rate", rate])
        assert done.value.code == 2
        assert "--rate: must be greater than 0" in capsys.readouterr().err


def test_folder_skips_formats_the_worker_does_not_decode(tmp_path):
    folder = _folder(tmp_path / "memes", "a.png", "b.bmp", "c.jpg")
    sources, skipped = read_folder(folder)
    assert [s.image_path.name for s in sources] == ["a.png", "c.jpg"]
    assert [p.name for p in skipped] == ["b.bmp"]
    only, skipped = read_folder(folder, ["PNG"])  # MEMEGUARD_IMAGE_FORMATS narrows it further
    assert [s.image_path.name for s in only] == ["a.png"] and len(skipped) == 2


@pytest.mark.integration
def test_produce_folder_notes_the_skipped_bmp(stack, topics, tmp_path):
    folder = _folder(tmp_path / "memes", "a.png", "b.bmp")
    done = cli("produce", "--folder", str(folder), "--topic", topics.input,
               env=env_for(stack, file_root=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert "1 events acknowledged" in done.stdout
    assert "skipped 1 file(s) (.bmp)" in done.stderr and "b.bmp" in done.stderr


@pytest.mark.integration
def test_produce_never_creates_a_topic_when_told_never(stack, topics):
    new = f"new-{topics.group}"
    done = cli("produce", "--limit", "1", "--topic", new, env=env_for(stack, create_topics="never"))
    assert done.returncode == 2, done.stderr
    assert new in done.stderr and "MEMEGUARD_CREATE_TOPICS" in done.stderr and "Traceback" not in done.stderr
    assert new not in AdminClient({"bootstrap.servers": stack.bootstrap}).list_topics(timeout=10).topics


def test_text_log_lines_keep_their_extras():
    """Item 8: with MEMEGUARD_LOG_FORMAT=text a dead-letter line says which event, what kind and why."""
    import logging

    from consumer.ops.logs import TextFormatter, logging_config

    assert logging_config("text", "info")["formatters"]["default"] == {"()": TextFormatter}
    record = logging.LogRecord("consumer.worker", logging.INFO, __file__, 1, "dead letter", None, None)
    record.event_id, record.error_kind, record.message_ = "ev-1", "image_undecodable", "cannot identify image"
    line = TextFormatter().format(record)
    assert "dead letter" in line and "event_id=ev-1" in line and "error_kind=image_undecodable" in line
    assert "message_='cannot identify image'" in line and "\n" not in line
