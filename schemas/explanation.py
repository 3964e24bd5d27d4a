"""An explanation that follows a verdict on its own topic: the explainer is slow and optional, so the
verdict is published first and never waits for it."""

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

from schemas.enrichment import Explanation
from schemas.version import SCHEMA_VERSION


class VerdictExplanation(BaseModel):
    model_config = ConfigDict(frozen=True)

    schema_version: str = SCHEMA_VERSION
    event_id: str = Field(description="The verdict this explains (same event_id and post_id).")
    post_id: str
    content_hash: str
    model_version: str
    explanation: Explanation
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
