"""Alert rules from a small YAML file, and what each rule says about one verdict.

```yaml
rules:
  - name: blocked                 # every blocked post
    decision: block
  - name: smears-high             # one technique at or above a score
    technique: Smears
    min_score: 0.8
  - name: repeat-offender         # N flagged posts by one author within a window (event time)
    author_posts: 3
    window_s: 3600
    flagged_decisions: [review, block]
destinations:
  - name: trust-and-safety
    url: http://hooks.internal/memeguard
    rate_per_s: 5                 # per-destination rate limit
    max_attempts: 5               # then the alert goes to the alerts dead-letter topic
    backoff_s: 0.5                # doubled after each failure, capped at max_backoff_s
```
"""

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from consumer.errors import ConfigError
from schemas import TECHNIQUES, Decision, Verdict


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    decision: Decision | None = None
    technique: str | None = None
    min_score: float | None = Field(None, ge=0.0, le=1.0)
    author_posts: int | None = Field(None, ge=1)
    window_s: float | None = Field(None, gt=0)
    flagged_decisions: list[Decision] = Field(default_factory=lambda: [Decision.REVIEW, Decision.BLOCK])

    @property
    def kind(self) -> Literal["decision", "technique", "author"]:
        if self.author_posts is not None:
            return "author"
        return "technique" if self.technique is not None else "decision"

    @model_validator(mode="after")
    def _one_kind(self) -> "Rule":
        kinds = [self.decision is not None, self.technique is not None, self.author_posts is not None]
        if sum(kinds) != 1:
            raise ValueError("a rule has exactly one of: decision, technique (+ min_score), author_posts (+ window_s)")
        if self.technique is not None:
            if self.technique not in TECHNIQUES:
                raise ValueError(f"unknown technique {self.technique!r}; see schemas/techniques.py")
            if self.min_score is None:
                raise ValueError("a technique rule needs min_score")
        if self.author_posts is not None and self.window_s is None:
            raise ValueError("an author_posts rule needs window_s")
        return self

    def matches(self, v: Verdict) -> bool:
        """For decision/technique rules: does this verdict raise an alert? Author rules count instead."""
        if self.decision is not None:
            return v.decision == self.decision
        if self.technique is not None:
            return any(t.technique == self.technique and t.score >= (self.min_score or 0.0) for t in v.techniques)
        return v.decision in self.flagged_decisions and v.author_id is not None

    def reason(self, v: Verdict, count: int = 0) -> str:
        if self.decision is not None:
            return f"decision is {v.decision.value}"
        if self.technique is not None:
            score = next(t.score for t in v.techniques if t.technique == self.technique)
            return f"{self.technique} scored {score:.3f} (>= {self.min_score})"
        return f"author {v.author_id} has {count} flagged posts within {self.window_s:.0f}s"


class Destination(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    url: str = Field(pattern=r"^https?://")
    rate_per_s: float = Field(10.0, gt=0)
    max_attempts: int = Field(5, ge=1)
    backoff_s: float = Field(0.5, ge=0)
    max_backoff_s: float = Field(30.0, ge=0)
    timeout_s: float = Field(5.0, gt=0)
    queue_size: int = Field(1000, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)


class AlertConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[Rule] = Field(min_length=1)
    destinations: list[Destination] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> "AlertConfig":
        for what, names in (("rule", [r.name for r in self.rules]), ("destination", [d.name for d in self.destinations])):
            if len(names) != len(set(names)):
                raise ValueError(f"{what} names must be unique")
        return self

    @classmethod
    def from_file(cls, path: Path) -> "AlertConfig":
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"Cannot read the alert rules file {path}: {e}. Fix MEMEGUARD_ALERT_RULES_FILE.") from e
        try:
            return cls.model_validate(data or {})
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"Alert rules file {path}: {where}: {first['msg']}.") from e
