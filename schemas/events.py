"""The input event: one meme posted to a feed."""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.version import SCHEMA_VERSION

MAX_TEXT_CHARS = 10_000


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

    @field_validator("schema_version")
    @classmethod
    def _same_major(cls, v: str) -> str:
        if v.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise ValueError(f"unsupported schema_version {v!r}; this worker reads {SCHEMA_VERSION}")
        return v

    def model_post_init(self, __context: Any) -> None:
        if (self.image_b64 is None) == (self.image_url is None):
            raise ValueError("exactly one of image_b64 or image_url must be set")
