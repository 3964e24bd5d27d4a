"""Optional enrichment of memes before classification: OCR, faces, face attributes, objects,
sentiment, the feature text, text removal, and a VLM explainer for reviewed memes.

Serving side only: ONNX Runtime, OpenCV, numpy and httpx. Never torch, never `models`.
"""

from consumer.enrich.base import Record, Stage, StageUnavailable
from consumer.enrich.explainer import Explainer, ExplainerConfig
from consumer.enrich.inpaint import remove_text
from consumer.enrich.pipeline import EnrichmentPipeline

__all__ = [
    "EnrichmentPipeline",
    "Explainer",
    "ExplainerConfig",
    "Record",
    "Stage",
    "StageUnavailable",
    "remove_text",
]
