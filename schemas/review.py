"""A moderator's decision on `memes.reviews`: the review page publishes it, `dataset build` reads it.

Two kinds, told apart by `type`: a `review` (confirm -> block, overturn -> allow) and a `retraction` (undo:
the review `retracts` names stops counting). The record value is the message's JSON plus a `signature`
member: HMAC-SHA256 with MEMEGUARD_REVIEW_SIGNING_KEY over the message's canonical JSON (sorted keys, no
spaces, ASCII) bound to the topic's name. The moderator, the review time and the labels are read only from
signed content; the learning loop verifies (consumer/learning/reviews.py) and uses nothing that does not.
"""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from schemas.signing import SIGNATURE, canonical, sign
from schemas.techniques import Technique

REVIEW_SIGNATURE = SIGNATURE  # the record's JSON member that carries the HMAC (not part of the message)
MAX_REVIEW_BYTES = 1024 * 1024  # a review lists at most 1000 reposts: far below this
REVIEW_CONTEXT = b"memeguard-review-v1"

Id = Annotated[str, Field(min_length=1, max_length=200)]  # the input event's own bounds
ReviewId = Annotated[str, Field(min_length=1, max_length=128)]
ContentHash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Label = Annotated[Technique, Field()]  # only the 22 technique names


def _aware(v: datetime) -> datetime:
    return v.replace(tzinfo=UTC) if v.tzinfo is None or v.utcoffset() is None else v.astimezone(UTC)


class _Common(BaseModel):
    # Members this reader does not know (a later version's) are signed and ignored, never used.
    model_config = ConfigDict(extra="ignore", frozen=True, protected_namespaces=())

    review_id: ReviewId
    event_id: Id
    post_id: Id
    author_id: Annotated[str | None, Field(max_length=10_000)] = None
    content_hash: ContentHash
    moderator: Annotated[str, Field(min_length=1, max_length=200)]
    moderator_auth: Annotated[str | None, Field(max_length=64)] = None
    reviewed_at: datetime

    @field_validator("reviewed_at", mode="after")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return _aware(v)


class Duplicate(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: Annotated[str | None, Field(max_length=200)] = None
    post_id: Annotated[str | None, Field(max_length=200)] = None
    author_id: Annotated[str | None, Field(max_length=10_000)] = None


class ReviewMessage(_Common):
    type: Literal["review"]
    model: Annotated[str | None, Field(max_length=512)] = None  # the verdict's model version
    model_decision: Literal["allow", "review", "block"] | None = None
    harmful_score: Annotated[float | None, Field(ge=0.0, le=1.0)] = None
    action: Literal["confirm", "overturn"]
    final_decision: Literal["block", "allow"]
    # The moderator's harm verdict: how harmful the meme is (a training label for the harm head). Overturned
    # (allowed) memes are "not harmful"; absent in reviews published before the page asked for it.
    severity: Literal["not harmful", "somewhat harmful", "very harmful"] | None = None
    labels: Annotated[list[Label], Field(max_length=len(Technique))] = []
    rejected_labels: Annotated[list[Label], Field(max_length=len(Technique))] = []
    duplicates: Annotated[list[Duplicate], Field(max_length=1000)] = []
    duplicate_count: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0


class RetractionMessage(_Common):
    type: Literal["retraction"]
    retracts: ReviewId
    action: Literal["undo"] = "undo"
    retracted_action: Literal["confirm", "overturn"] | None = None
    retracted_final_decision: Literal["block", "allow"] | None = None


ReviewRecord = Annotated[ReviewMessage | RetractionMessage, Field(discriminator="type")]
REVIEW_RECORD: TypeAdapter[ReviewMessage | RetractionMessage] = TypeAdapter(ReviewRecord)


def canonical_review(doc: dict[str, Any]) -> bytes:
    """The bytes that are signed (schemas.signing.canonical)."""
    return canonical(doc)


def review_signature(key: bytes, topic: str, doc: dict[str, Any]) -> str:
    """HMAC-SHA256 of the message (without its signature) bound to the topic it is published on."""
    return sign(key, REVIEW_CONTEXT, topic, doc)


def encode_review(topic: str, doc: dict[str, Any], key: bytes | None) -> bytes:
    """The record value of a review message on `topic`: signed when there is a key."""
    doc = {k: v for k, v in doc.items() if k != REVIEW_SIGNATURE}
    if key:
        doc[REVIEW_SIGNATURE] = review_signature(key, topic, doc)
    return canonical_review(doc)
