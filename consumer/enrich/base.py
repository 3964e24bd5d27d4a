"""The one interface every enrichment stage has: a batch of records in, typed features written out."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from consumer.errors import ConfigError, MemeguardError
from schemas.enrichment import DetectedObject, Face, FaceAttributes, OcrResult, Sentiment


class StageUnavailable(MemeguardError):
    """An optional stage cannot run here (package or weights missing); the pipeline disables it."""


class StageConfig(BaseModel):
    """Base of every stage's options; unknown keys are an error so a typo is not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class Record:
    """One image travelling through the stages; each stage fills its own fields."""

    image: np.ndarray  # H×W×3 uint8, RGB
    text: str | None = None
    ocr: OcrResult | None = None
    faces: list[Face] = field(default_factory=list)
    attributes: list[FaceAttributes] = field(default_factory=list)
    objects: list[DetectedObject] = field(default_factory=list)
    sentiment: Sentiment | None = None
    feature_text: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def best_text(self) -> str:
        """The caption the event carried, else what OCR read."""
        if self.text and self.text.strip():
            return self.text
        return self.ocr.text if self.ocr else ""


class Stage(ABC):
    """A pluggable enrichment step. Subclasses set `name`, `Config`, and implement `process`.

    `process` gets only the records the stage should handle (see `skip_reason`). Stages that hold
    engines which are not documented as thread-safe (OpenCV cascades, rapidocr) serialise calls
    with `self.lock`; ONNX Runtime sessions are thread-safe and need none.
    """

    name: ClassVar[str]
    Config: ClassVar[type[StageConfig]] = StageConfig

    def __init__(self, config: StageConfig) -> None:
        self.config = config
        self.lock = threading.Lock()

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> Stage:
        try:
            config = cls.Config(**(options or {}))
        except ValidationError as e:
            raise ConfigError(f"Options for enrichment stage {cls.name!r} are invalid: {e}") from e
        return cls(config)

    def skip_reason(self, record: Record) -> str | None:
        """Why this record does not need the stage, or None to run it."""
        return None

    @abstractmethod
    def process(self, records: Sequence[Record]) -> None:
        """Compute this stage's features for every record and store them on it."""

    def warmup(self) -> None:
        """Run once on a blank image so the first real event does not pay for lazy initialisation."""
        self.process([Record(image=np.full((64, 64, 3), 255, np.uint8), text="warm up")])
