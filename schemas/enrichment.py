"""Typed outputs of the enrichment stages (OCR, faces, attributes, objects, sentiment, explainer).

The feature-text recipe lives here, beside the types it reads, because it is a contract: the
classifier trained in `models/features/` and the worker in `consumer/enrich/` must build exactly
the same string from the same `Enrichment`, and this package is the only one both may import.
"""

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Box(BaseModel):
    """Axis-aligned box in pixels of the image the stage was given (x1, y1 top-left)."""

    model_config = ConfigDict(frozen=True)

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def area(self) -> float:
        return max(0.0, self.x2 - self.x1) * max(0.0, self.y2 - self.y1)


class OcrLine(BaseModel):
    model_config = ConfigDict(frozen=True)

    text: str
    score: float = Field(ge=0.0, le=1.0)
    box: Box
    # The detector's four corners (clockwise from top-left); text can be rotated in memes.
    polygon: list[tuple[float, float]] = Field(default_factory=list)


class OcrResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    text: str
    lines: list[OcrLine] = Field(default_factory=list)
    engine: str = "rapidocr"


class Face(BaseModel):
    model_config = ConfigDict(frozen=True)

    box: Box
    score: float | None = Field(default=None, ge=0.0, le=1.0, description="None for Haar (no score).")
    detector: str


class FaceAttributes(BaseModel):
    model_config = ConfigDict(frozen=True)

    face_index: int = Field(ge=0, description="Index into Enrichment.faces.")
    age: float | None = Field(default=None, ge=0.0)
    age_group: str | None = None
    gender: str | None = None
    gender_score: float | None = Field(default=None, ge=0.0, le=1.0)
    emotion: str | None = None
    race: str | None = None
    backend: str


class DetectedObject(BaseModel):
    model_config = ConfigDict(frozen=True)

    label: str
    score: float = Field(ge=0.0, le=1.0)
    box: Box
    detector: str


class SentimentLabel(StrEnum):
    NEGATIVE = "negative"
    NEUTRAL = "neutral"
    POSITIVE = "positive"


class Sentiment(BaseModel):
    model_config = ConfigDict(frozen=True)

    label: SentimentLabel
    compound: float = Field(ge=-1.0, le=1.0, description="Signed polarity, -1 most negative.")
    method: str


class Explanation(BaseModel):
    """A vision-language model's zero-shot opinion on a meme the fast model sent to review."""

    model_config = ConfigDict(frozen=True)

    verdict: str = Field(description="'harmful', 'not_harmful' or 'unsure' as parsed from the reply.")
    explanation: str
    model: str
    latency_ms: float = Field(ge=0.0)


class Enrichment(BaseModel):
    model_config = ConfigDict(frozen=True)

    ocr: OcrResult | None = None
    faces: list[Face] = Field(default_factory=list)
    attributes: list[FaceAttributes] = Field(default_factory=list)
    objects: list[DetectedObject] = Field(default_factory=list)
    sentiment: Sentiment | None = None
    feature_text: str | None = None
    explanation: Explanation | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    skipped: dict[str, str] = Field(
        default_factory=dict, description="Stage name -> why it did not run for this image."
    )
    errors: dict[str, str] = Field(default_factory=dict, description="Stage name -> error; others still ran.")


def age_group(age: float) -> str:
    """Coarse age bucket used in the feature text (the recipe names groups, not years)."""
    if age < 13:
        return "child"
    if age < 20:
        return "teenager"
    if age < 40:
        return "young adult"
    if age < 60:
        return "middle-aged adult"
    return "senior"


def feature_text(
    text: str | None,
    *,
    sentiment: Sentiment | None,
    objects: list[DetectedObject],
    faces: list[Face],
    attributes: list[FaceAttributes],
    max_objects: int = 10,
) -> str:
    """One string holding everything the stages found, in the published recipe's order:
    text, sentiment, objects, face count, face attributes (gender, age group, emotion, race).

    Sections are always present (with 'none') so a text model sees a stable layout.
    """
    parts = [f"text: {' '.join((text or '').split()) or 'none'}"]
    parts.append(f"sentiment: {sentiment.label.value if sentiment else 'unknown'}")
    counts: dict[str, int] = {}
    for obj in sorted(objects, key=lambda o: -o.score)[:max_objects]:
        counts[obj.label] = counts.get(obj.label, 0) + 1
    listed = ", ".join(f"{n} {label}" if n > 1 else label for label, n in counts.items())
    parts.append(f"objects: {listed or 'none'}")
    parts.append(f"faces: {len(faces)}")
    people = []
    for attr in attributes:
        bits = [
            b
            for b in (attr.gender, attr.age_group, attr.emotion, attr.race)
            if b  # emotion/race are absent with the default backend; say nothing rather than guess
        ]
        if bits:
            people.append(" ".join(bits))
    parts.append(f"people: {'; '.join(people) or 'none'}")
    return " | ".join(parts)
