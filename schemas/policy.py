"""The decision policy: harm score, severity and technique flags -> allow / review / block, with its reasons.

It travels in the bundle manifest (so hot reload, rollout and rollback change model and policy together) and
can be overridden per deployment by a YAML file (MEMEGUARD_POLICY_FILE). Every verdict names the policy that
decided it (`Verdict.policy_id`).

Rules, in order (the first that matches decides):
1. block: P(harmful) >= `harm_block`, or P(very harmful) >= `severity_block`;
2. block: a severe technique flagged with score >= `block_min_score` while P(harmful) >= `harm_review`;
3. review: P(harmful) >= `harm_review`;
4. review: a severe technique flagged with score >= `technique_review_min_score` (set it to 1.0 to turn off);
5. review: at least `review_min_flags` techniques flagged (0 turns it off: techniques alone do not mean harm);
6. allow.
A bundle without a harm head falls back to the technique rules alone.
"""

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.techniques import TECHNIQUES, Technique
from schemas.verdict import Decision, TechniqueScore

SEVERITY_LEVELS = ("not harmful", "somewhat harmful", "very harmful")


class PolicyFit(BaseModel):
    """How `memeguard calibrate` (or the default build) chose the cut-offs, and what it measured."""

    model_config = ConfigDict(frozen=True)

    data: str = Field(description="The labelled data, e.g. 'HarMeme train+val, 5-fold out-of-fold scores (6,304)'.")
    target: dict[str, float] = Field(default_factory=dict, description="e.g. {'review_rate': 0.1}.")
    target_met: bool = True
    base_rate: float | None = Field(None, description="Expected share of harmful memes on the feed.")
    figures: dict[str, float] = Field(default_factory=dict, description="Rates, block precision, harmful recall.")


class DecisionPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field("builtin-techniques-v1", description="Named in every verdict it decides.")
    harm_review: float = Field(0.5, ge=0, le=1, description="P(harmful) at or above which a meme is reviewed.")
    harm_block: float = Field(0.9, ge=0, le=1, description="P(harmful) at or above which a meme is blocked.")
    severity_block: float = Field(1.0, ge=0, le=1, description="P(very harmful) at or above which it is blocked.")
    severe_techniques: list[str] = Field(
        default_factory=lambda: [
            Technique.REDUCTIO_AD_HITLERUM.value,
            Technique.APPEAL_TO_FEAR.value,
            Technique.BLACK_AND_WHITE.value,
        ]
    )
    block_min_score: float = Field(0.8, ge=0, le=1, description="A severe technique flagged at least this sure.")
    technique_review_min_score: float = Field(1.0, ge=0, le=1)
    review_min_flags: int = Field(1, ge=0, description="Review when at least this many techniques are flagged.")
    fit: PolicyFit | None = None

    @field_validator("severe_techniques")
    @classmethod
    def _known_techniques(cls, names: list[str]) -> list[str]:
        # A misspelt name would silently switch its block rule off.
        unknown = [n for n in names if n not in TECHNIQUES]
        if unknown:
            raise ValueError(f"unknown technique name(s) {unknown}; the names are those of schemas/techniques.py")
        return names

    def decide(
        self, techniques: list[TechniqueScore], harmful: float | None, severity_scores: list[float] | None = None
    ) -> tuple[Decision, list[str]]:
        flagged = [t for t in techniques if t.flagged]
        severe = [t for t in flagged if t.technique in self.severe_techniques]
        very = severity_scores[-1] if severity_scores else None
        has_harm = harmful is not None
        block = []
        if has_harm and harmful >= self.harm_block:
            block.append(f"harmful score {harmful:.2f} >= {self.harm_block:.2f}")
        if very is not None and very >= self.severity_block:
            block.append(f"very harmful at {very:.2f} >= {self.severity_block:.2f}")
        harm_review = has_harm and harmful >= self.harm_review
        if harm_review or not has_harm:
            block += [f"severe technique '{t.technique}' at {t.score:.2f}" for t in severe
                      if t.score >= self.block_min_score]
        if block:
            return Decision.BLOCK, block
        review = []
        if harm_review:
            review.append(f"harmful score {harmful:.2f} >= {self.harm_review:.2f}")
        review += [f"severe technique '{t.technique}' at {t.score:.2f}" for t in severe
                   if t.score >= self.technique_review_min_score]
        if self.review_min_flags and len(flagged) >= self.review_min_flags:
            review.append("flagged: " + ", ".join(t.technique for t in sorted(flagged, key=lambda t: -t.score)))
        if review:
            return Decision.REVIEW, review
        if has_harm:
            return Decision.ALLOW, [f"harmful score {harmful:.2f} < {self.harm_review:.2f}"]
        return Decision.ALLOW, ["no technique above its threshold"]
