"""YOLOv8 ONNX decoding + OpenCV NMS, the objects stage's backends and its missing-weights paths."""

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from consumer.enrich.base import StageUnavailable  # noqa: E402
from consumer.enrich.objects import ObjectsStage  # noqa: E402
from consumer.enrich.yolo import Letterbox, YoloOnnx, decode, letterbox  # noqa: E402

LABELS = ["person", "dog", "flag"]


def head_output(rows: list[tuple[float, float, float, float, int, float]], n_anchors: int = 50) -> np.ndarray:
    """A raw YOLOv8 head output [4 + nc, anchors] holding the given (cx, cy, w, h, class, score)
    predictions and low-score noise elsewhere."""
    out = np.zeros((4 + len(LABELS), n_anchors), np.float32)
    out[:4] = np.array([10, 10, 5, 5], np.float32)[:, None]
    out[4:] = 0.01
    for i, (cx, cy, w, h, cls, score) in enumerate(rows):
        out[:4, i] = (cx, cy, w, h)
        out[4 + cls, i] = score
    return out


def test_decode_applies_nms_per_class_and_threshold() -> None:
    out = head_output([
        (100, 100, 40, 40, 0, 0.9),  # person
        (102, 101, 40, 40, 0, 0.8),  # same person, overlaps: suppressed
        (101, 100, 40, 40, 1, 0.7),  # dog at the same place: another class, kept
        (300, 200, 20, 60, 2, 0.6),  # flag
        (400, 400, 30, 30, 0, 0.1),  # below the threshold
    ])
    found = decode(out, Letterbox(scale=1.0, width=640, height=640), LABELS, "test", conf=0.25, iou=0.45)
    kept = sorted((o.label, round(o.score, 2)) for o in found)
    assert kept == [("dog", 0.7), ("flag", 0.6), ("person", 0.9)]
    person = next(o for o in found if o.label == "person")
    assert (person.box.x1, person.box.y1, person.box.x2, person.box.y2) == (80, 80, 120, 120)


def test_decode_maps_back_through_letterbox_and_clips() -> None:
    # A 1280×640 image letterboxed into 320: scale 0.25. A box at (50, 50) in input pixels is at (200, 200).
    out = head_output([(50, 50, 20, 20, 1, 0.9), (318, 100, 20, 20, 2, 0.9)])
    found = decode(out, Letterbox(scale=0.25, width=1280, height=640), LABELS, "test")
    dog = next(o for o in found if o.label == "dog")
    assert (dog.box.x1, dog.box.y1, dog.box.x2, dog.box.y2) == (160, 160, 240, 240)
    flag = next(o for o in found if o.label == "flag")
    assert flag.box.x2 == 1280  # clipped to the image


def test_decode_nothing_above_threshold() -> None:
    assert decode(head_output([]), Letterbox(1.0, 64, 64), LABELS, "test") == []


def test_letterbox_keeps_origin_and_aspect() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :] = 255
    chw, lb = letterbox(img, 64)
    assert chw.shape == (3, 64, 64) and lb.scale == 64 / 200
    assert chw[:, :32, :].min() == 1.0  # image in the top rows
    assert np.allclose(chw[:, 40:, :], 114 / 255)  # grey padding below


def constant_yolo(path: Path, out: np.ndarray, size: int = 320) -> Path:
    """An ONNX model with YOLOv8's I/O that returns a fixed head output for every image in the batch."""
    c = helper.make_tensor("c", TensorProto.FLOAT, (1, *out.shape), out.ravel().tolist())
    tail = helper.make_tensor("tail", TensorProto.INT64, (2,), list(out.shape))
    nodes = [
        helper.make_node("Shape", ["images"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "tail"], ["out_shape"], axis=0),
        helper.make_node("Expand", ["c", "out_shape"], ["output0"]),
    ]
    inits = [c, tail, helper.make_tensor("zero", TensorProto.INT64, (1,), [0]),
             helper.make_tensor("one", TensorProto.INT64, (1,), [1])]
    graph = helper.make_graph(
        nodes, "const_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", *out.shape])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key="names", value=str(dict(enumerate(LABELS))))
    onnx.save(model, str(path))
    return path


def test_objects_stage_with_user_model_reads_names_from_metadata(tmp_path: Path) -> None:
    path = constant_yolo(tmp_path / "y.onnx", head_output([(160, 160, 64, 64, 2, 0.8)]))
    stage = ObjectsStage.from_options({"backend": "yolov8", "model_path": str(path)})
    images = [np.zeros((640, 640, 3), np.uint8), np.zeros((320, 160, 3), np.uint8)]
    first, second = stage.detect(images)
    assert [o.label for o in first] == ["flag"] and first[0].detector == "yolov8"
    assert (first[0].box.x1, first[0].box.x2) == (256, 384)  # 320 input -> 640 image: ×2
    assert (second[0].box.x1, second[0].box.y2) == (128, 192)  # the letterbox scale is per image


def test_objects_stage_nudenet_backend_runs() -> None:
    stage = ObjectsStage.from_options({})  # auto without a user model: nudenet
    assert stage.backend == "nudenet"
    assert stage.detect([np.full((240, 320, 3), 200, np.uint8)]) == [[]]


def test_objects_missing_user_model(tmp_path: Path) -> None:
    with pytest.raises(StageUnavailable, match="does not exist"):
        ObjectsStage.from_options({"backend": "yolov8", "model_path": str(tmp_path / "missing.onnx")})
    with pytest.raises(StageUnavailable, match="model_path"):
        ObjectsStage.from_options({"backend": "yolov8"})
    # auto falls back to the always-available detector instead of failing
    assert ObjectsStage.from_options({"model_path": str(tmp_path / "missing.onnx")}).backend == "nudenet"


def test_corrupt_model_is_unavailable(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(StageUnavailable, match="cannot be loaded"):
        YoloOnnx(bad, LABELS, "yolov8")


@pytest.mark.slow
def test_random_yolov8n_exported_from_ultralytics_runs_in_the_stage(tmp_path: Path) -> None:
    """The real network layout: a randomly initialised yolov8n.yaml exported to ONNX by the training side."""
    pytest.importorskip("torch")
    try:
        from models.features.export_yolo import build, export
        model = build("yolov8n.yaml", nc=3)
    except (SystemExit, ImportError) as e:
        pytest.skip(f"ultralytics not usable here: {e}")
    path = export(model, tmp_path / "yolov8n_random.onnx", imgsz=160, names=LABELS)
    opts = {"backend": "yolov8", "model_path": str(path), "conf": 0.0, "max_det": 5}
    stage = ObjectsStage.from_options(opts)
    rng = np.random.default_rng(0)
    found = stage.detect([rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)] * 2)
    assert stage.model.labels == LABELS and stage.model.input_size == 160
    assert len(found) == 2 and 0 < len(found[0]) <= 5
    for o in found[0]:
        assert o.label in LABELS and 0 <= o.box.x1 <= o.box.x2 <= 200 and 0 <= o.box.y1 <= o.box.y2 <= 120
