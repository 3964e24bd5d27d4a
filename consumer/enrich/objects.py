"""Object detection with a YOLOv8-layout ONNX model in ONNX Runtime.

Backends: a user-provided `yolov8n.onnx` (COCO classes, names read from the export's metadata)
or nudenet's shipped YOLOv8n, which is always installable offline and detects the
moderation-relevant classes (exposed/covered body parts, male/female faces).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from consumer.enrich.base import Record, Stage, StageConfig, StageUnavailable
from consumer.enrich.nudenet_model import NUDENET_INPUT, NUDENET_LABELS, nudenet_model_path, readable
from consumer.enrich.yolo import YoloOnnx
from schemas.enrichment import DetectedObject

log = logging.getLogger(__name__)


class ObjectsConfig(StageConfig):
    # auto: the user's YOLOv8 when `model_path` names an existing file, else nudenet.
    backend: Literal["auto", "yolov8", "nudenet"] = "auto"
    model_path: str | None = None
    labels: list[str] | None = None  # overrides the names stored in the ONNX metadata
    input_size: int | None = None  # default: the model's fixed input size, else 640
    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 50


class ObjectsStage(Stage):
    name: ClassVar[str] = "objects"
    Config = ObjectsConfig

    def __init__(self, config: ObjectsConfig) -> None:
        super().__init__(config)
        self.config: ObjectsConfig = config
        backend = config.backend
        if backend == "auto":
            has_user_model = config.model_path is not None and Path(config.model_path).is_file()
            if config.model_path and not has_user_model:
                log.warning("objects: %s does not exist; using nudenet's detector instead", config.model_path)
            backend = "yolov8" if has_user_model else "nudenet"
        if backend == "yolov8":
            if not config.model_path:
                raise StageUnavailable(
                    "objects backend 'yolov8' needs options['objects']['model_path'] pointing at a "
                    "yolov8n.onnx (export one with `python -m models.features.export_yolo`)."
                )
            self.model = YoloOnnx(Path(config.model_path), config.labels, "yolov8", config.input_size)
        else:
            labels = config.labels or NUDENET_LABELS
            size = config.input_size or NUDENET_INPUT
            self.model = YoloOnnx(nudenet_model_path(None), labels, "nudenet", size)
        self.backend = backend

    def detect(self, images: Sequence[np.ndarray]) -> list[list[DetectedObject]]:
        c = self.config
        found = self.model.detect(images, conf=c.conf, iou=c.iou, max_det=c.max_det)
        if self.backend == "nudenet":
            found = [[o.model_copy(update={"label": readable(o.label)}) for o in objs] for objs in found]
        return found

    def process(self, records: Sequence[Record]) -> None:
        for record, objs in zip(records, self.detect([r.image for r in records]), strict=True):
            record.objects = objs
