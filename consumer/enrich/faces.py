"""Face detection: OpenCV's Haar cascade (the published baseline) or nudenet's YOLOv8 face classes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import cv2
import numpy as np

from consumer.enrich.base import Record, Stage, StageConfig, StageUnavailable
from consumer.enrich.nudenet_model import NUDENET_INPUT, NUDENET_LABELS, nudenet_model_path
from consumer.enrich.yolo import YoloOnnx
from schemas.enrichment import Box, Face


class FacesConfig(StageConfig):
    backend: Literal["haar", "nudenet"] = "haar"
    cascade: str = "haarcascade_frontalface_default.xml"
    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_size: int = 30  # px; smaller hits on memes are mostly letters of the caption
    max_side: int = 800  # downscale larger images first: Haar cost grows with pixel count
    model_path: str | None = None  # nudenet backend: another YOLOv8-layout face model
    conf: float = 0.35


class HaarFaces:
    def __init__(self, config: FacesConfig) -> None:
        path = Path(cv2.data.haarcascades) / config.cascade
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise StageUnavailable(
                f"Haar cascade {path} is missing or unreadable; install opencv-python-headless<5 "
                "(5.x dropped the cascades)."
            )
        self.config = config

    def detect(self, image: np.ndarray) -> list[Face]:
        c = self.config
        scale = min(1.0, c.max_side / max(image.shape[:2]))
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        min_px = max(1, round(c.min_size * scale))
        rects = self.cascade.detectMultiScale(
            gray, scaleFactor=c.scale_factor, minNeighbors=c.min_neighbors, minSize=(min_px, min_px)
        )
        return [
            Face(box=Box(x1=x / scale, y1=y / scale, x2=(x + w) / scale, y2=(y + h) / scale), detector="haar")
            for x, y, w, h in np.asarray(rects).reshape(-1, 4)
        ]


class FacesStage(Stage):
    name: ClassVar[str] = "faces"
    Config = FacesConfig

    def __init__(self, config: FacesConfig) -> None:
        super().__init__(config)
        self.config: FacesConfig = config
        self.haar = HaarFaces(config) if config.backend == "haar" else None
        self.yolo = (
            YoloOnnx(nudenet_model_path(config.model_path), NUDENET_LABELS, "nudenet", NUDENET_INPUT)
            if config.backend == "nudenet"
            else None
        )

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        if self.haar is not None:
            out = []
            for image in images:
                with self.lock:  # CascadeClassifier is not documented as thread-safe
                    out.append(self.haar.detect(image))
            return out
        assert self.yolo is not None
        return [
            [
                Face(box=o.box, score=o.score, detector="nudenet")
                for o in found
                if o.label.startswith("FACE_")
            ]
            for found in self.yolo.detect(images, conf=self.config.conf)
        ]

    def process(self, records: Sequence[Record]) -> None:
        for record, faces in zip(records, self.detect([r.image for r in records]), strict=True):
            record.faces = faces
