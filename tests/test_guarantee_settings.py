"""MEMEGUARD_GUARANTEE beside MEMEGUARD_WORKER_ENGINE: its former name still works, and combinations that cannot
run are refused at start in one sentence instead of being silently changed (issue 28)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from consumer.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_inherited_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MEMEGUARD_GUARANTEE", "MEMEGUARD_PROCESSING_GUARANTEE", "MEMEGUARD_WORKER_ENGINE",
                 "MEMEGUARD_PIPELINE_DEPTH"):
        monkeypatch.delenv(name, raising=False)


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> WorkerSettings:
    for name, value in env.items():
        monkeypatch.setenv(f"MEMEGUARD_{name}", value)
    return WorkerSettings()


def test_the_guarantee_and_its_former_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert WorkerSettings().guarantee == "at_least_once"
    assert settings(monkeypatch, GUARANTEE="exactly_once").guarantee == "exactly_once"
    monkeypatch.delenv("MEMEGUARD_GUARANTEE")
    assert settings(monkeypatch, PROCESSING_GUARANTEE="exactly_once").guarantee == "exactly_once"
    assert settings(monkeypatch, GUARANTEE="exactly_once").guarantee == "exactly_once"  # both, agreeing
    assert WorkerSettings(processing_guarantee="exactly_once").guarantee == "exactly_once"
    with pytest.raises(ValidationError, match="disagree"):
        settings(monkeypatch, GUARANTEE="at_least_once")


def test_exactly_once_is_refused_on_faust(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="runs only on MEMEGUARD_WORKER_ENGINE=confluent"):
        settings(monkeypatch, GUARANTEE="exactly_once", WORKER_ENGINE="faust")
    assert settings(monkeypatch, GUARANTEE="at_least_once").worker_engine == "faust"


def test_a_pipeline_depth_exactly_once_would_ignore_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings(monkeypatch, GUARANTEE="exactly_once").pipeline_depth == 2  # the default: not asked for
    assert settings(monkeypatch, PIPELINE_DEPTH="1").pipeline_depth == 1
    with pytest.raises(ValidationError, match="one batch .one transaction. at a time"):
        settings(monkeypatch, PIPELINE_DEPTH="3")
    monkeypatch.setenv("MEMEGUARD_GUARANTEE", "at_least_once")
    assert WorkerSettings().pipeline_depth == 3


def test_the_worker_says_so_in_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMEGUARD_")}
    env |= {"MEMEGUARD_GUARANTEE": "exactly_once", "MEMEGUARD_WORKER_ENGINE": "faust"}
    result = subprocess.run([sys.executable, "-m", "consumer.cli", "worker"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "MEMEGUARD_GUARANTEE=exactly_once runs only on" in lines[0], result.stderr
