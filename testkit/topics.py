"""Unique topic and group names per test or benchmark run."""

import uuid
from dataclasses import dataclass


@dataclass
class Topics:
    input: str
    output: str
    dlq: str
    group: str

    @classmethod
    def unique(cls) -> "Topics":
        tag = uuid.uuid4().hex[:8]
        return cls(f"raw-{tag}", f"verdicts-{tag}", f"dlq-{tag}", f"group-{tag}")
