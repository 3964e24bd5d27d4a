"""The output of moderation for one meme."""

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from schemas.enrichment import Enrichment
from schemas.version import SCHEMA_VERSION


class Decision(StrEnum):
    ALLOW = "allow"
    REVIEW = "review"
    BLOCK = "block"


class TechniqueScore(BaseModel):
    model_config = ConfigDict(frozen=True)

    technique: str
    score: float = Field(ge=0.0, le=1.0)
    threshold: float = Field(ge=0.0, le=1.0)
    flagged: bool


class ModelInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    precision: str = "fp32"
    provider: str = "CPUExecutionProvider"


class Verdict(BaseModel):
    model_config = ConfigDict(frozen=True)

    schema_version: str = SCHEMA_VERSION
    event_id: str
    post_id: str
    author_id: str | None = None
    content_hash: str
    model: ModelInfo
    harmful_score: float | None = Field(
        default=None, ge=0.0, le=1.0, description="P(harmful); present when the bundle declares a harm head."
    )
    severity: str | None = Field(
        default=None, description="Most likely of 'not harmful' / 'somewhat harmful' / 'very harmful', when declared."
    )
    severity_scores: list[float] | None = Field(
        default=None, description="Probabilities of the three severities, in that order, when declared."
    )
    techniques: list[TechniqueScore]
    decision: Decision
    reasons: list[str] = Field(default_factory=list)
    policy_id: str | None = Field(default=None, description="The decision policy that decided (reasons say which rule).")
    timings_ms: dict[str, float] = Field(default_factory=dict)
    cached: bool = False
    explanation: str | None = None
    enrichment: Enrichment | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC), description="When this verdict was made.")
    event_created_at: datetime | None = Field(default=None, description="The event's own created_at (UTC).")

    @property
    def flagged(self) -> list[TechniqueScore]:
        return [t for t in self.techniques if t.flagged]

    def top(self, n: int = 3) -> list[TechniqueScore]:
        return sorted(self.techniques, key=lambda t: t.score, reverse=True)[:n]
