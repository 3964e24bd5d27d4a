"""Decision policy: technique flags and scores (and the harmful score) -> allow / review / block."""

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from consumer.errors import ConfigError
from schemas import Decision, Technique, TechniqueScore


class DecisionPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    severe_techniques: list[str] = Field(
        default_factory=lambda: [
            Technique.REDUCTIO_AD_HITLERUM.value,
            Technique.APPEAL_TO_FEAR.value,
            Technique.BLACK_AND_WHITE.value,
        ]
    )
    block_min_score: float = Field(0.8, ge=0, le=1, description="A severe technique flagged at least this sure.")
    harmful_block: float = Field(0.9, ge=0, le=1)
    harmful_review: float = Field(0.5, ge=0, le=1)
    review_min_flags: int = Field(1, ge=1, description="Review when at least this many techniques are flagged.")

    @classmethod
    def from_file(cls, path: Path | None) -> "DecisionPolicy":
        if path is None:
            return cls()
        try:
            return cls.model_validate(yaml.safe_load(path.read_text()) or {})
        except (OSError, yaml.YAMLError, ValueError) as e:
            raise ConfigError(f"Decision policy {path} is unreadable or invalid: {e}") from e

    def decide(self, techniques: list[TechniqueScore], harmful: float | None) -> tuple[Decision, list[str]]:
        flagged = [t for t in techniques if t.flagged]
        severe = [t for t in flagged if t.technique in self.severe_techniques and t.score >= self.block_min_score]
        block = [f"severe technique '{t.technique}' at {t.score:.2f}" for t in severe]
        if harmful is not None and harmful >= self.harmful_block:
            block.append(f"harmful score {harmful:.2f} >= {self.harmful_block}")
        if block:
            return Decision.BLOCK, block
        review = []
        if len(flagged) >= self.review_min_flags:
            review.append("flagged: " + ", ".join(t.technique for t in sorted(flagged, key=lambda t: -t.score)))
        if harmful is not None and harmful >= self.harmful_review:
            review.append(f"harmful score {harmful:.2f} >= {self.harmful_review}")
        if review:
            return Decision.REVIEW, review
        return Decision.ALLOW, ["no technique above its threshold"]
