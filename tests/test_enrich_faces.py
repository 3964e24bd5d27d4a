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


def ferplus_like(path: Path) -> Path:
    """A FER+-shaped ONNX ([N,1,64,64] grey -> 8 logits) whose answer depends on brightness:
    bright faces -> 'happiness' (index 1), dark ones -> 'sadness' (index 3)."""
    import onnx
    from onnx import TensorProto, helper

    w = np.zeros((1, 8), np.float32)
    w[0, 1], w[0, 3] = 1.0, -1.0
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),  # [N]
        helper.make_node("Unsqueeze", ["m", "one"], ["m2"]),  # [N, 1]
        helper.make_node("Sub", ["m2", "mid"], ["c"]),
        helper.make_node("MatMul", ["c", "w"], ["logits"]),
    ]
    inits = [
        helper.make_tensor("axes", TensorProto.INT64, (3,), [1, 2, 3]),
        helper.make_tensor("one", TensorProto.INT64, (1,), [1]),
        helper.make_tensor("mid", TensorProto.FLOAT, (1,), [128.0]),
        helper.make_tensor("w", TensorProto.FLOAT, (1, 8), w.ravel().tolist()),
    ]
    graph = helper.make_graph(
        nodes, "ferplus_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 8])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_emotion_from_a_user_onnx(tmp_path: Path) -> None:
    path = ferplus_like(tmp_path / "emotion-ferplus-8.onnx")
    stage = AttributesStage.from_options({"emotion_model_path": str(path)})
    bright = np.full((100, 100, 3), 230, np.uint8)
    dark = np.full((100, 100, 3), 20, np.uint8)
    box = Box(x1=20, y1=20, x2=80, y2=80)
    assert stage.describe(bright, [box])[0].emotion == "happiness"
    assert stage.describe(dark, [box])[0].emotion == "sadness"


def test_missing_emotion_model_keeps_age_gender(tmp_path: Path, caplog) -> None:
    import logging

    with caplog.at_level(logging.WARNING, logger="consumer.enrich.attributes"):
        stage = AttributesStage.from_options({"emotion_model_path": str(tmp_path / "none.onnx")})
    assert stage.emotion is None and "does not exist" in caplog.text
    a = stage.describe(np.full((100, 100, 3), 120, np.uint8), [Box(x1=10, y1=10, x2=90, y2=90)])[0]
    assert a.gender in ("male", "female") and a.emotion is None
