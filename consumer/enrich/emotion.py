"""Facial emotion from a user-provided ONNX classifier (no emotion model with weights installs
offline from PyPI: hsemotion-onnx and DeepFace download theirs at run time).

The default layout is the ONNX model zoo's FER+ (`emotion-ferplus-8.onnx`): one grey 64×64 face,
raw 0-255 values, 8 logits. Other models fit by setting size, channels, scaling and labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from consumer.enrich.base import StageUnavailable

FERPLUS_LABELS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")


class EmotionOnnx:
    def __init__(
        self, path: Path, labels: Sequence[str] = FERPLUS_LABELS, scale: float = 1.0, mean: float = 0.0
    ) -> None:
        if not path.is_file():
            raise StageUnavailable(f"emotion model {path} does not exist; emotion stays empty.")
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises untyped errors for unreadable models
            raise StageUnavailable(f"emotion model {path} cannot be loaded by onnxruntime: {e}") from e
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.channels = inp.shape[1] if isinstance(inp.shape[1], int) else 1
        self.side = inp.shape[2] if isinstance(inp.shape[2], int) else 64
        self.fixed_batch = isinstance(inp.shape[0], int)
        self.labels, self.scale, self.mean = list(labels), scale, mean

    def _prepare(self, face: np.ndarray) -> np.ndarray:
        img = cv2.resize(face, (self.side, self.side), interpolation=cv2.INTER_AREA)
        if self.channels == 1:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None]
        chw = img.astype(np.float32).transpose(2, 0, 1)
        return (chw - self.mean) * self.scale

    def predict(self, crops: Sequence[np.ndarray]) -> list[str]:
        if not crops:
            return []
        batch = np.stack([self._prepare(c) for c in crops])
        if self.fixed_batch:
            logits = np.concatenate([self.session.run(None, {self.input_name: b[None]})[0] for b in batch])
        else:
            logits = self.session.run(None, {self.input_name: batch})[0]
        idx = np.asarray(logits).reshape(len(crops), -1).argmax(axis=1)  # argmax: softmax not needed
        return [self.labels[i] if i < len(self.labels) else f"emotion_{i}" for i in idx]
