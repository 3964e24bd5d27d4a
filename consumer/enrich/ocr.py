"""OCR with rapidocr (PP-OCR ONNX models shipped inside the wheel, so it works offline)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from consumer.enrich.base import Record, Stage, StageConfig, StageUnavailable
from schemas.enrichment import Box, OcrLine, OcrResult

# Capping the detector's long side at 960 px is ~8x faster than rapidocr's default on memes and
# loses nothing on caption-sized text (measured in bench/bench_enrich.py).
# rapidocr logs every model path at INFO and warns on each text-free image; the service log
# only needs its errors.
DEFAULT_PARAMS: dict[str, Any] = {
    "Det.limit_type": "max",
    "Det.limit_side_len": 960,
    "Global.log_level": "error",
}


class OcrConfig(StageConfig):
    params: dict[str, Any] = {}
    min_score: float = 0.5


def lines_from_output(
    txts: Sequence[str], scores: Sequence[float], boxes: Any, min_score: float
) -> list[OcrLine]:
    lines: list[OcrLine] = []
    if boxes is None:
        return lines
    for txt, score, quad in zip(txts, scores, boxes, strict=True):
        if score < min_score or not txt.strip():
            continue
        pts = np.asarray(quad, dtype=float)
        box = Box(x1=pts[:, 0].min(), y1=pts[:, 1].min(), x2=pts[:, 0].max(), y2=pts[:, 1].max())
        lines.append(
            OcrLine(
                text=txt.strip(),
                score=float(min(max(score, 0.0), 1.0)),
                box=box,
                polygon=[(float(x), float(y)) for x, y in pts],
            )
        )
    return lines


class OcrStage(Stage):
    """Reads overlaid text; runs only for events that carried no text of their own."""

    name: ClassVar[str] = "ocr"
    Config = OcrConfig

    def __init__(self, config: OcrConfig) -> None:
        super().__init__(config)
        self.config: OcrConfig = config
        try:
            from rapidocr import RapidOCR
        except ImportError as e:
            raise StageUnavailable("OCR needs the `rapidocr` package: pip install 'rapidocr>=3,<4'.") from e
        self.engine = RapidOCR(params={**DEFAULT_PARAMS, **config.params})

    def skip_reason(self, record: Record) -> str | None:
        if record.text and record.text.strip():
            return "event carries text"
        return None

    def read(self, images: Sequence[np.ndarray]) -> list[OcrResult]:
        results = []
        for image in images:
            with self.lock:
                out = self.engine(image)
            lines = lines_from_output(out.txts or (), out.scores or (), out.boxes, self.config.min_score)
            results.append(OcrResult(text="\n".join(line.text for line in lines), lines=lines))
        return results

    def process(self, records: Sequence[Record]) -> None:
        for record, result in zip(records, self.read([r.image for r in records]), strict=True):
            record.ocr = result
