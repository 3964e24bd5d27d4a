"""Wire contracts of memeguard (pydantic v2). Imports nothing else of ours."""

from schemas.dead_letter import DeadLetter, ErrorKind, Origin
from schemas.events import MemeEvent
from schemas.explanation import VerdictExplanation
from schemas.manifest import BundleManifest, FileDigest, ImagePreprocessing, InputSpec, TextPreprocessing
from schemas.review import RetractionMessage, ReviewMessage
from schemas.techniques import TECHNIQUE_DESCRIPTIONS, TECHNIQUES, Technique
from schemas.verdict import Decision, ModelInfo, TechniqueScore, Verdict
from schemas.version import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "TECHNIQUES",
    "TECHNIQUE_DESCRIPTIONS",
    "BundleManifest",
    "DeadLetter",
    "Decision",
    "ErrorKind",
    "FileDigest",
    "ImagePreprocessing",
    "InputSpec",
    "MemeEvent",
    "ModelInfo",
    "Origin",
    "RetractionMessage",
    "ReviewMessage",
    "Technique",
    "TechniqueScore",
    "TextPreprocessing",
    "Verdict",
    "VerdictExplanation",
]
