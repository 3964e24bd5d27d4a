"""The enrichment pipeline the worker calls: named stages in a fixed order, each timed and skippable."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image
from pydantic import ValidationError

from consumer.enrich.attributes import AttributesStage
from consumer.enrich.base import Record, Stage, StageUnavailable
from consumer.enrich.explainer import Explainer, ExplainerConfig
from consumer.enrich.faces import FacesStage
from consumer.enrich.inpaint import remove_text
from consumer.enrich.objects import ObjectsStage
from consumer.enrich.ocr import OcrStage
from consumer.enrich.sentiment import SentimentStage
from consumer.errors import ConfigError
from schemas.enrichment import Enrichment, Explanation, feature_text

log = logging.getLogger(__name__)

# Order matters: sentiment reads OCR text, attributes read faces, feature text reads everything.
STAGES: dict[str, type[Stage]] = {
    "ocr": OcrStage,
    "sentiment": SentimentStage,
    "faces": FacesStage,
    "objects": ObjectsStage,
    "attributes": AttributesStage,
}
KNOWN = (*STAGES, "feature_text", "explainer")


class EnrichmentPipeline:
    """`enrich` is synchronous and thread-safe (the worker runs it in a thread pool);
    `explain` is async and meant only for memes sent to review."""

    def __init__(
        self, stages: Sequence[Stage], explainer: Explainer | None, build_feature_text: bool
    ) -> None:
        self.stages = list(stages)
        self.explainer = explainer
        self.build_feature_text = build_feature_text

    @classmethod
    def from_names(cls, names: Iterable[str], options: dict[str, Any] | None = None) -> EnrichmentPipeline:
        """Build the named stages. `options[name]` holds one stage's settings (see each stage's
        Config). 'sentiment' and 'feature_text' join automatically whenever anything else runs,
        since they only combine what the other stages found; set `options[name] = {"enabled": False}`
        to leave one out. A stage whose package or weights are missing is disabled with one log line.
        """
        options = dict(options or {})
        wanted = list(dict.fromkeys(names))
        unknown = [n for n in wanted if n not in KNOWN]
        if unknown:
            raise ConfigError(f"Unknown enrichment stage(s) {unknown}; choose from {list(KNOWN)}.")
        if "attributes" in wanted and "faces" not in wanted:
            log.info("enrichment: 'attributes' needs face boxes, adding the 'faces' stage")
            wanted.append("faces")
        derived_on = bool(set(wanted) - {"explainer"})
        for derived in ("sentiment", "feature_text"):
            opts = dict(options.get(derived) or {})
            enabled = opts.pop("enabled", True)
            options[derived] = opts
            if derived_on and enabled and derived not in wanted:
                wanted.append(derived)
            if not enabled and derived in wanted:
                wanted.remove(derived)
        stages: list[Stage] = []
        for name, stage_cls in STAGES.items():
            if name not in wanted:
                continue
            try:
                stages.append(stage_cls.from_options(options.get(name)))
            except StageUnavailable as e:
                log.warning("enrichment stage %r disabled: %s", name, e)
        if "attributes" in wanted and not any(s.name == "faces" for s in stages):
            stages = [s for s in stages if s.name != "attributes"]
            log.warning("enrichment stage 'attributes' disabled: the 'faces' stage is unavailable")
        explainer = None
        if "explainer" in wanted:
            try:
                explainer = Explainer(ExplainerConfig(**(options.get("explainer") or {})))
            except ValidationError as e:
                bad = ", ".join(".".join(map(str, err["loc"])) for err in e.errors())
                log.warning("enrichment stage 'explainer' disabled: bad or missing option(s) %s", bad)
        return cls(stages, explainer, "feature_text" in wanted)

    @property
    def stage_names(self) -> list[str]:
        names = [s.name for s in self.stages]
        if self.build_feature_text:
            names.append("feature_text")
        if self.explainer is not None:
            names.append("explainer")
        return names

    def warmup(self) -> None:
        for stage in self.stages:
            stage.warmup()

    def enrich(self, image: Image.Image, text: str | None = None) -> Enrichment:
        return self.enrich_batch([image], [text])[0]

    def enrich_batch(self, images: Sequence[Image.Image], texts: Sequence[str | None]) -> list[Enrichment]:
        """Run every active stage over the batch; a failing stage is recorded per image, not raised."""
        pairs = zip(images, texts, strict=True)
        records = [Record(image=np.asarray(img.convert("RGB")), text=txt) for img, txt in pairs]
        for stage in self.stages:
            todo = []
            for record in records:
                reason = stage.skip_reason(record)
                if reason is None:
                    todo.append(record)
                else:
                    record.skipped[stage.name] = reason
            if not todo:
                continue
            started = time.perf_counter()
            try:
                stage.process(todo)
            except Exception as e:  # one bad stage must not cost the verdict; the error is reported
                log.exception("enrichment stage %r failed on a batch of %d", stage.name, len(todo))
                for record in todo:
                    record.errors[stage.name] = f"{type(e).__name__}: {e}"
            per_image = (time.perf_counter() - started) * 1000.0 / len(todo)
            for record in todo:
                record.timings_ms[stage.name] = round(per_image, 3)
        return [self._finish(r) for r in records]

    def _finish(self, record: Record) -> Enrichment:
        text = None
        if self.build_feature_text:
            started = time.perf_counter()
            text = feature_text(
                record.best_text, sentiment=record.sentiment, objects=record.objects,
                faces=record.faces, attributes=record.attributes,
            )
            record.timings_ms["feature_text"] = round((time.perf_counter() - started) * 1000.0, 3)
        return Enrichment(
            ocr=record.ocr, faces=record.faces, attributes=record.attributes, objects=record.objects,
            sentiment=record.sentiment, feature_text=text, timings_ms=record.timings_ms,
            skipped=record.skipped, errors=record.errors,
        )

    async def explain(self, image: Image.Image, text: str | None, verdict_summary: str) -> Explanation | None:
        if self.explainer is None:
            return None
        return await self.explainer.explain(image, text, verdict_summary)

    @staticmethod
    def text_removed_view(image: Image.Image, enrichment: Enrichment) -> Image.Image:
        """The image with OCR'd text inpainted away (a second view / training augmentation)."""
        rgb = np.asarray(image.convert("RGB"))
        lines = enrichment.ocr.lines if enrichment.ocr else []
        return Image.fromarray(remove_text(rgb, lines))
