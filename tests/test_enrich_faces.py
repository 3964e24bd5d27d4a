"""Faces (Haar and nudenet) and age/gender attributes on a real meme from the data set."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from consumer.enrich.attributes import AttributesConfig, AttributesStage  # noqa: E402
from consumer.enrich.base import StageUnavailable  # noqa: E402
from consumer.enrich.faces import FacesConfig, FacesStage  # noqa: E402
from schemas.enrichment import Box  # noqa: E402

# A SemEval-2021 task 6 meme with one clear frontal face of a man (teacher at a blackboard).
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "semeval2021_task6" / "images"
FACE_IMAGE = DATA / "160_image.png"
FACE_REGION = Box(x1=400, y1=260, x2=650, y2=520)  # where the face is, by eye, in 960×960 pixels


@pytest.fixture(scope="module")
def face_image() -> np.ndarray:
    if not FACE_IMAGE.is_file():
        pytest.skip(f"{FACE_IMAGE} not present (shared data set missing)")
    return np.asarray(Image.open(FACE_IMAGE).convert("RGB"))


def centre_inside(box: Box, region: Box) -> bool:
    cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
    return region.x1 <= cx <= region.x2 and region.y1 <= cy <= region.y2


def test_haar_finds_the_face(face_image: np.ndarray) -> None:
    faces = FacesStage.from_options({"backend": "haar"}).detect([face_image])[0]
    assert any(centre_inside(f.box, FACE_REGION) for f in faces)
    assert all(f.detector == "haar" and f.score is None for f in faces)


def test_nudenet_face_backend_finds_the_face(face_image: np.ndarray) -> None:
    faces = FacesStage.from_options({"backend": "nudenet"}).detect([face_image])[0]
    assert any(centre_inside(f.box, FACE_REGION) for f in faces)


def test_haar_finds_nothing_on_blank() -> None:
    stage = FacesStage(FacesConfig())
    assert stage.detect([np.full((200, 200, 3), 128, np.uint8)]) == [[]]


def test_age_gender_on_detected_face(face_image: np.ndarray) -> None:
    faces = FacesStage.from_options({"backend": "haar"}).detect([face_image])[0]
    face = next(f for f in faces if centre_inside(f.box, FACE_REGION))
    attrs = AttributesStage(AttributesConfig()).describe(face_image, [face.box])
    assert len(attrs) == 1
    a = attrs[0]
    assert a.gender == "male" and a.backend == "age_gender"
    assert a.age is not None and 0 <= a.age <= 80 and a.age_group
    assert a.emotion is None  # no offline emotion model: left empty, never guessed


def test_attributes_missing_models_dir_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StageUnavailable, match="manifest.json"):
        AttributesStage.from_options({"models_dir": str(tmp_path)})


def test_deepface_backend_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(StageUnavailable, match="deepface|DeepFace weights missing"):
        AttributesStage.from_options({"backend": "deepface", "deepface_home": str(tmp_path)})


def test_nudenet_face_model_missing_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StageUnavailable, match="does not exist"):
        FacesStage.from_options({"backend": "nudenet", "model_path": str(tmp_path / "none.onnx")})


def test_missing_cascade_is_unavailable() -> None:
    with pytest.raises(StageUnavailable, match="cascade"):
        FacesStage.from_options({"cascade": "no_such_cascade.xml"})
