"""The input event: one meme posted to a feed."""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.text_safety import is_valid_unicode
from schemas.version import SCHEMA_VERSION

MAX_TEXT_CHARS = 10_000
MAX_METADATA_DEPTH = 16


def _metadata_problem(metadata: dict[str, Any]) -> str | None:
    """Walk iteratively (an adversary's nesting must not exhaust the stack): depth and Unicode."""
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            return f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels"
        if isinstance(node, dict):
            for k, v in node.items():
                if not is_valid_unicode(k):
                    return "metadata has a key that is not valid Unicode (a lone surrogate)"
                stack.append((v, depth + 1))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, str) and not is_valid_unicode(node):
            return "metadata has a string that is not valid Unicode (a lone surrogate)"
    return None


class MemeEvent(BaseModel):
    """A meme to moderate. Exactly one of `image_b64` / `image_url` carries the image.

    `image_url` may be `file://` (resolved under the worker's allowed root) or `http(s)://`
    (fetched with timeout, size cap and private-address blocking).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: str = SCHEMA_VERSION
    event_id: Annotated[str, Field(min_length=1, max_length=200)]
    post_id: Annotated[str, Field(min_length=1, max_length=200)]
    author_id: str | None = None
    image_b64: str | None = Field(default=None, description="Image bytes, base64 (standard alphabet).")
    image_url: str | None = Field(default=None, description="file://, http:// or https:// reference.")
    text: Annotated[str | None, Field(max_length=MAX_TEXT_CHARS)] = None
    language: str = "en"
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    metadata: dict[str, Any] = Field(default_factory=dict)
    # Gold labels, only on labelled topics replayed for evaluation.
    labels: list[str] | None = None
    kind: Literal["meme"] = "meme"

    @field_validator("created_at", mode="after")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        # A timestamp without an offset is read as UTC (documented in docs/operations.md): comparing naive
        # and aware times raises, and producers that omit the offset almost always mean UTC.
        return v.replace(tzinfo=UTC) if v.tzinfo is None or v.utcoffset() is None else v

    @field_validator("event_id", "post_id", "author_id", "image_url", "text", "language", mode="after")
    @classmethod
    def _unicode(cls, v: str | None) -> str | None:
        if v is not None and not is_valid_unicode(v):
            raise ValueError("contains a lone surrogate: not valid Unicode, so it could never be published")
        return v

    @field_validator("labels", mode="after")
    @classmethod
    def _unicode_labels(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not all(is_valid_unicode(label) for label in v):
            raise ValueError("a label contains a lone surrogate: not valid Unicode")
        return v

    @field_validator("metadata", mode="after")
    @classmethod
    def _bounded_metadata(cls, v: dict[str, Any]) -> dict[str, Any]:
        if (problem := _metadata_problem(v)) is not None:
            raise ValueError(problem)
        return v

    @field_validator("schema_version")
    @classmethod
    def _same_major(cls, v: str) -> str:
        if v.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise ValueError(f"unsupported schema_version {v!r}; this worker reads {SCHEMA_VERSION}")
        return v

    def model_post_init(self, __context: Any) -> None:
        if (self.image_b64 is None) == (self.image_url is None):
            raise ValueError("exactly one of image_b64 or image_url must be set")
