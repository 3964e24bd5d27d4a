"""Issue 29 item 5 and the error convention: every subcommand, given a broker nobody listens on, a Redis URL
without its scheme or a log level that does not exist, says so in one line (exit 2) and shows no traceback
and none of librdkafka's own log lines.

The misconfigured environment is checked before any work, so those two cases run in process through main();
the broken bootstrap runs each command as its own process (librdkafka's threads write to the process's
stderr), all at once, with one-second broker timeouts."""

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from consumer.cli import main
from consumer.devinfra.stack import free_port

REPO = Path(__file__).resolve().parents[1]
LIBRDKAFKA_LINE = re.compile(r"^%\d\|\d+\.\d+\||\|rdkafka#|FAIL\|", re.M)
# Not run here: `dev up`/`down` (they start and stop the servers), and the training commands (train, evaluate-run,
# export, bundle), forwarded untouched to their own modules in the training environment. `demo` starts servers and
# builds a bundle: it is run only for the environment cases, which stop it before any of that.


def commands(tmp: Path, bundle: Path) -> dict[str, list[str]]:
    data = REPO.parent / "shared" / "data" / "semeval" / "dev.json"
    return {
        "worker": ["worker"],
        "produce": ["produce", "--limit", "1"],
        "tail": ["tail", "--max", "1"],
        "replay": ["replay", "--topic", "t", "--out", str(tmp / "replay")],
        "alert": ["alert", "--rules", str(REPO / "ops" / "alert-rules.example.yaml"), "--exit-when-idle", "1"],
        "review": ["review"],
        "rollout": ["rollout", str(bundle), "--timeout", "1"],
        "rollback": ["rollback", "--timeout", "1"],
        "dataset": ["dataset", "build", "--out", str(tmp / "dataset")],
        "calibrate": ["calibrate", "--bundle", str(bundle), "--data", str(data), "--out", str(tmp / "cal")],
        "shadow": ["shadow", "--bundle", str(bundle), "--idle-exit", "1"],
        "compare": ["compare"],
        "promote": ["promote", "--candidate", str(bundle), "--data", str(data)],
        "schemas": ["schemas", "export", str(tmp / "schemas")],
        "evaluate": ["evaluate", "--bundle", str(bundle), "--data", str(tmp / "none.json"), "--out", str(tmp / "ev")],
        "hash-password": ["hash-password"],
        "dev status": ["dev", "status"],
        "demo": ["demo", "--limit", "1"],
    }


# The commands that talk to the broker. `rollout` checks its bundle first (here: none, so that is its one line).
BROKER = {"produce", "tail", "replay", "alert", "review", "worker", "rollout", "rollback", "dataset", "shadow",
          "compare", "promote"}
BROKER_FIRST = BROKER - {"rollout"}


def base_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMEGUARD_")}
    return env | {"MEMEGUARD_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",  # nobody listens there
                  "MEMEGUARD_CONNECT_TIMEOUT_S": "1", "MEMEGUARD_STARTUP_TIMEOUT_S": "1",
                  "MEMEGUARD_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nor there
                  "MEMEGUARD_LOG_FORMAT": "json", "MEMEGUARD_METRICS_PORT": "0",
                  "MEMEGUARD_REVIEW_DEV_NO_AUTH": "true", "MEMEGUARD_RESTART_BACKOFF_S": "0",
                  "MEMEGUARD_BUNDLE_PATH": str(tmp / "no-bundle"), "COLUMNS": "80"}


def problems(stderr: str) -> list[str]:
    """What breaks the convention: a traceback, librdkafka's lines, more than one line that is not a JSON log
    line of a service (a worker logs its broker retries)."""
    found = []
    if "Traceback" in stderr:
        found.append("traceback")
    if LIBRDKAFKA_LINE.search(stderr):
        found.append("librdkafka log lines")
    plain = [line for line in stderr.splitlines() if line.strip() and not _is_json(line)]
    if len(plain) > 1:
        found.append(f"{len(plain)} lines: {plain[:3]}")
    return found


def _is_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


@pytest.mark.parametrize("setting, value, named", [
    ("MEMEGUARD_LOG_LEVEL", "verbose", "MEMEGUARD_LOG_LEVEL 'verbose'"),
    ("MEMEGUARD_REDIS_URL", "localhost:6379", "MEMEGUARD_REDIS_URL 'localhost:6379'"),
])
def test_a_bad_setting_is_one_line_from_every_command(tmp_path, monkeypatch, capfd, setting, value, named):
    for k, v in base_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    for k in [k for k in os.environ if k.startswith("MEMEGUARD_") and k not in base_env(tmp_path)]:
        monkeypatch.delenv(k)
    monkeypatch.setenv(setting, value)
    uses_redis = {"worker", "replay", "alert", "review", "shadow", "demo"}
    failures = {}
    for name, argv in commands(tmp_path, tmp_path / "bundle").items():
        if setting == "MEMEGUARD_REDIS_URL" and name not in uses_redis:
            continue  # a command that never reads the Redis URL is not stopped by it
        rc = main(argv)
        err = capfd.readouterr().err
        if rc != 2 or named not in err or problems(err):
            failures[name] = (rc, problems(err), err[-300:])
    assert failures == {}


def test_a_broker_nobody_listens_on_is_one_line_from_every_command(tmp_path):
    env = base_env(tmp_path)
    bootstrap = env["MEMEGUARD_KAFKA_BOOTSTRAP"]

    def run(item: tuple[str, list[str]]) -> tuple[str, subprocess.CompletedProcess]:
        name, argv = item
        return name, subprocess.run([sys.executable, "-m", "consumer.cli", *argv], cwd=REPO, env=env,
                                    input="a long enough password\n", capture_output=True, text=True, timeout=50)

    # The others never read the bootstrap (the environment cases above run them all).
    todo = [(n, a) for n, a in commands(tmp_path, tmp_path / "bundle").items() if n in BROKER]
    with ThreadPoolExecutor(6) as pool:
        done = dict(pool.map(run, todo))
    failures = {}
    for name, proc in done.items():
        found = problems(proc.stderr)
        if proc.returncode != 2 or (name in BROKER_FIRST and bootstrap not in proc.stderr):
            found.append(f"exit {proc.returncode}, the bootstrap not named")
        if found:
            failures[name] = (found, proc.stderr[-400:])
    assert failures == {}


def test_debug_shows_the_traceback_and_verbose_the_client_log(tmp_path, monkeypatch):
    from consumer.errors import ConfigError

    monkeypatch.setenv("MEMEGUARD_LOG_LEVEL", "verbose")
    with pytest.raises(ConfigError):  # the exception itself, traceback and all
        main(["worker", "--debug"])
    env = base_env(tmp_path)
    quiet = subprocess.run([sys.executable, "-m", "consumer.cli", "tail"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=50)
    loud = subprocess.run([sys.executable, "-m", "consumer.cli", "--verbose", "tail"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=50)
    assert quiet.returncode == loud.returncode == 2
    assert not LIBRDKAFKA_LINE.search(quiet.stderr) and LIBRDKAFKA_LINE.search(loud.stderr), loud.stderr[-500:]


def test_librdkafka_log_is_quiet_unless_asked_for(monkeypatch):
    from consumer.kafka.config import client_config

    monkeypatch.delenv("MEMEGUARD_KAFKA_CLIENT_LOGS", raising=False)
    assert client_config("h:9092")["log_level"] == 2  # critical only: no FAIL|rdkafka# line per refused connect
    assert client_config("h:9092", {"log_level": 7})["log_level"] == 7  # a caller's own choice wins
    monkeypatch.setenv("MEMEGUARD_KAFKA_CLIENT_LOGS", "true")
    assert "log_level" not in client_config("h:9092")
