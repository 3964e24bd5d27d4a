"""Where nudenet's shipped YOLOv8n ONNX detector lives, and the names of its classes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from consumer.enrich.base import StageUnavailable

# Class order of nudenet 3.4's 320n.onnx head (rows 4.. of its output); fixed by that model file.
NUDENET_LABELS: tuple[str, ...] = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
NUDENET_INPUT = 320


def nudenet_model_path(explicit: str | None = None) -> Path:
    """The ONNX file: an explicit path, else the one inside the installed `nudenet` wheel.

    Only the file is used; importing nudenet itself would pull its own OpenCV wheel choice.
    """
    if explicit:
        return Path(explicit)
    spec = importlib.util.find_spec("nudenet")
    if spec is None or not spec.submodule_search_locations:
        raise StageUnavailable(
            "nudenet's detector is not installed: pip install --no-deps nudenet==3.4.2 "
            "(--no-deps keeps opencv-python-headless as the only OpenCV wheel)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "320n.onnx"
    if not path.is_file():
        raise StageUnavailable(f"nudenet is installed but {path} is missing; reinstall nudenet==3.4.2.")
    return path


def readable(label: str) -> str:
    """FACE_FEMALE -> 'face female' so the feature text reads like words to a text model."""
    return label.lower().replace("_", " ")
