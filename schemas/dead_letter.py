"""A record the worker could not turn into a verdict, kept with its original bytes."""

import base64
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from schemas.text_safety import MAX_ID_CHARS, MAX_MESSAGE_CHARS, safe_text
from schemas.version import SCHEMA_VERSION


class ErrorKind(StrEnum):
    INVALID_JSON = "invalid_json"
    SCHEMA_VIOLATION = "schema_violation"
    OVERSIZED = "oversized"
    IMAGE_MISSING = "image_missing"
    IMAGE_UNDECODABLE = "image_undecodable"
    IMAGE_TOO_LARGE = "image_too_large"
    PIXEL_BOMB = "pixel_bomb"
    FORBIDDEN_URL = "forbidden_url"
    FETCH_FAILED = "fetch_failed"
    INFERENCE_FAILED = "inference_failed"
    PUBLISH_FAILED = "publish_failed"
    POISON_RECORD = "poison_record"  # the worker exited twice while processing this record (crash-loop breaker)
    INTERNAL_ERROR = "internal_error"


class Origin(BaseModel):
    model_config = ConfigDict(frozen=True)

    topic: str
    partition: int
    offset: int


class DeadLetter(BaseModel):
    """Bytes are base64 in JSON so any payload (even non-UTF-8) survives the round trip."""

    model_config = ConfigDict(frozen=True)

    schema_version: str = SCHEMA_VERSION
    event_id: str | None = Field(default=None, description="When the record parsed far enough to have one.")
    error_kind: ErrorKind
    message: str
    origin: Origin
    original_key: bytes | None = None
    original_value: bytes
    original_truncated: bool = Field(
        default=False, description="True when the original was too large to republish; see `origin` for it."
    )
    original_size: int | None = None
    original_sha256: str | None = None
    attempts: int = 1
    failed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("event_id", mode="after")
    @classmethod
    def _safe_id(cls, v: str | None) -> str | None:
        return None if v is None else safe_text(v, MAX_ID_CHARS)

    @field_validator("message", mode="after")
    @classmethod
    def _safe_message(cls, v: str) -> str:
        # Messages quote input (URLs, field names, exception text): they must never make a dead letter
        # unpublishable.
        return safe_text(v, MAX_MESSAGE_CHARS)

    @field_serializer("original_key", "original_value", when_used="json")
    def _b64(self, v: bytes | None) -> str | None:
        return None if v is None else base64.b64encode(v).decode("ascii")

    @field_validator("original_key", "original_value", mode="before")
    @classmethod
    def _unb64(cls, v: object) -> object:
        return base64.b64decode(v) if isinstance(v, str) else v
