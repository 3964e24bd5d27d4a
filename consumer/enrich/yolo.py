"""YOLOv8 ONNX in ONNX Runtime: letterbox, box decoding of the raw head output, OpenCV NMS.

A YOLOv8 detection head exported to ONNX emits one tensor [batch, 4 + n_classes, n_anchors]:
rows 0-3 are box centre x, centre y, width, height in input pixels, the other rows are per-class
sigmoid scores (no objectness row, unlike YOLOv5). Both ultralytics' `yolov8n.onnx` and
nudenet's `320n.onnx` have this layout.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from consumer.enrich.base import StageUnavailable
from schemas.enrichment import Box, DetectedObject


@dataclass(frozen=True)
class Letterbox:
    """How one image was fitted into the square network input, to map boxes back."""

    scale: float  # input pixels per original pixel
    width: int
    height: int


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Resize the long side to `size`, pad bottom/right with grey; return CHW float32 in [0, 1].

    Padding only at the bottom/right keeps the origin fixed, so mapping back is a single division.
    """
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((size, size, 3), 114, np.uint8)
    canvas[:nh, :nw] = resized[..., :3]
    chw = canvas.transpose(2, 0, 1).astype(np.float32) / 255.0
    return chw, Letterbox(scale=scale, width=w, height=h)


def decode(
    output: np.ndarray,
    box: Letterbox,
    labels: Sequence[str],
    detector: str,
    conf: float = 0.25,
    iou: float = 0.45,
    max_det: int = 100,
) -> list[DetectedObject]:
    """Turn one image's head output [4 + n_classes, n_anchors] into boxes after class-aware NMS."""
    preds = output.T  # [n_anchors, 4 + n_classes]
    scores_all = preds[:, 4:]
    cls = scores_all.argmax(axis=1)
    scores = scores_all[np.arange(len(preds)), cls]
    keep = scores >= conf
    if not keep.any():
        return []
    preds, cls, scores = preds[keep], cls[keep], scores[keep]
    cx, cy, w, h = preds[:, 0], preds[:, 1], preds[:, 2], preds[:, 3]
    # NMSBoxes wants [x, y, w, h] with a top-left corner, in any consistent unit.
    xywh = np.stack([cx - w / 2, cy - h / 2, w, h], axis=1)
    idx = cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), cls.tolist(), conf, iou, top_k=max_det)
    found = []
    for i in np.asarray(idx, dtype=int).reshape(-1)[:max_det]:
        x, y, bw, bh = xywh[i] / box.scale
        label = labels[cls[i]] if cls[i] < len(labels) else f"class_{cls[i]}"
        found.append(
            DetectedObject(
                label=label,
                score=float(min(max(scores[i], 0.0), 1.0)),
                box=Box(
                    x1=float(np.clip(x, 0, box.width)),
                    y1=float(np.clip(y, 0, box.height)),
                    x2=float(np.clip(x + bw, 0, box.width)),
                    y2=float(np.clip(y + bh, 0, box.height)),
                ),
                detector=detector,
            )
        )
    return found


def labels_from_metadata(session: ort.InferenceSession) -> list[str] | None:
    """ultralytics writes `names` ("{0: 'person', ...}") into the ONNX metadata on export."""
    raw = session.get_modelmeta().custom_metadata_map.get("names")
    if not raw:
        return None
    try:
        names = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    return [str(n) for n in names] if isinstance(names, list) else None


class YoloOnnx:
    """A YOLOv8-layout detector session; `detect` takes a batch of RGB uint8 images."""

    def __init__(
        self,
        path: Path,
        labels: Sequence[str] | None,
        detector: str,
        input_size: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        if not path.is_file():
            raise StageUnavailable(f"YOLO model {path} does not exist; export one or point the option at it.")
        try:
            self.session = ort.InferenceSession(str(path), providers=list(providers))
        except Exception as e:  # ORT raises its own untyped errors for corrupt/unsupported files
            raise StageUnavailable(f"YOLO model {path} cannot be loaded by onnxruntime: {e}") from e
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        fixed = inp.shape[2] if isinstance(inp.shape[2], int) else None
        self.input_size = input_size or fixed or 640
        self.fixed_batch = isinstance(inp.shape[0], int)
        self.labels = list(labels) if labels is not None else (labels_from_metadata(self.session) or [])
        self.detector = detector

    def detect(
        self, images: Sequence[np.ndarray], conf: float = 0.25, iou: float = 0.45, max_det: int = 100
    ) -> list[list[DetectedObject]]:
        if not images:
            return []
        prepared = [letterbox(img, self.input_size) for img in images]
        if self.fixed_batch:  # exports without a dynamic batch axis take one image per call
            outs = [self.session.run(None, {self.input_name: chw[None]})[0][0] for chw, _ in prepared]
        else:
            batch = np.stack([chw for chw, _ in prepared])
            outs = list(self.session.run(None, {self.input_name: batch})[0])
        return [
            decode(out, lb, self.labels, self.detector, conf, iou, max_det)
            for out, (_, lb) in zip(outs, prepared, strict=True)
        ]
