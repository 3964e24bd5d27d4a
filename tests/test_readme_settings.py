"""Every setting a memeguard process reads from the environment is in the README's settings table."""

import re
from pathlib import Path

from consumer.kafka.config import KafkaSecurity
from consumer.review.settings import ReviewSettings
from consumer.settings import AlertSettings, WorkerSettings

README = Path(__file__).resolve().parents[1] / "README.md"


def documented_names() -> set[str]:
    """Names in the table's first column: `MEMEGUARD_A` / `B` / `C` documents A, B and C."""
    names = set()
    for line in README.read_text().splitlines():
        if line.startswith("| `MEMEGUARD_"):
            first_cell = line.split("|")[1]
            names.update(n.removeprefix("MEMEGUARD_") for n in re.findall(r"`([A-Z0-9_]+)`", first_cell))
    return names


def settings_names() -> set[str]:
    names = {f.upper() for cls in (WorkerSettings, AlertSettings, ReviewSettings) for f in cls.model_fields}
    return names | {f"KAFKA_{f.upper()}" for f in KafkaSecurity.model_fields}  # env prefix MEMEGUARD_KAFKA_


def documented_settings() -> set[str]:
    """A short name in a `MEMEGUARD_KAFKA_…` row (`SASL_USERNAME`) keeps the row's KAFKA_ prefix."""
    kafka = {f"KAFKA_{f.upper()}" for f in KafkaSecurity.model_fields}
    return {f"KAFKA_{n}" if f"KAFKA_{n}" in kafka else n for n in documented_names()}


def test_every_setting_is_in_the_readme_table():
    assert sorted(settings_names() - documented_settings()) == []


def test_the_table_names_no_setting_that_does_not_exist():
    assert sorted(documented_settings() - settings_names()) == []
