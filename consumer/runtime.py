"""ONNX Runtime inference over a model bundle: provider choice, preprocessing, one batched call."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from consumer.bundle import ModelBundle
from consumer.errors import BundleError
from consumer.preprocess import TextEncoder, images_to_batch
from schemas import ModelInfo

log = logging.getLogger(__name__)

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass(frozen=True)
class Prediction:
    technique_probs: np.ndarray  # [B, n_labels] float32
    harmful_probs: np.ndarray | None  # [B] float32, when the bundle has a binary head


def choose_providers(requested: str, engine_cache: Path | None, fp16: bool) -> list:
    """`auto` takes the fastest provider this onnxruntime build offers; a name forces that one."""
    available = ort.get_available_providers()
    if requested != "auto":
        wanted = [p for p in PROVIDER_PREFERENCE if p.lower().startswith(requested.lower())]
        if not wanted or wanted[0] not in available:
            raise BundleError(f"Execution provider {requested!r} is not available here (have: {available}).")
        names = [wanted[0], "CPUExecutionProvider"] if wanted[0] != "CPUExecutionProvider" else [wanted[0]]
    else:
        names = [p for p in PROVIDER_PREFERENCE if p in available]
    providers: list = []
    for name in names:
        if name == "TensorrtExecutionProvider" and engine_cache is not None:
            engine_cache.mkdir(parents=True, exist_ok=True)
            providers.append(
                (name, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(engine_cache),
                        "trt_fp16_enable": fp16})
            )
        else:
            providers.append(name)
    return providers


class BundleRuntime:
    """Everything the worker needs from a model: `predict(images, texts)` and its identity."""

    def __init__(self, bundle: ModelBundle, providers: str = "auto", intra_op_threads: int = 0) -> None:
        self.bundle = bundle
        m = bundle.manifest
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        chosen = choose_providers(providers, bundle.root / "trt_cache", fp16=m.precision == "fp16")
        try:
            self.session = ort.InferenceSession(str(bundle.onnx_path), options, providers=chosen)
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise BundleError(f"ONNX Runtime could not load {bundle.onnx_path}: {e}") from e
        # ORT silently falls back to CPU when CUDA libraries are missing: report what is really active.
        self.provider = self.session.get_providers()[0]
        log.info("model %s %s loaded on %s", m.name, m.version, self.provider)
        self._input_names = {i.name for i in self.session.get_inputs()}
        self._text = TextEncoder(bundle.root, m.text) if m.text is not None else None
        self._float_type = np.float16 if m.precision == "fp16" and self._expects_fp16() else np.float32
        self.thresholds = np.asarray(m.thresholds, dtype=np.float32)

    @classmethod
    def load(cls, path: Path | str, providers: str = "auto", intra_op_threads: int = 0) -> "BundleRuntime":
        return cls(ModelBundle.load(path), providers=providers, intra_op_threads=intra_op_threads)

    @property
    def manifest(self):
        return self.bundle.manifest

    @property
    def version(self) -> str:
        return f"{self.manifest.name}@{self.manifest.version}"

    @property
    def model_info(self) -> ModelInfo:
        m = self.manifest
        return ModelInfo(name=m.name, version=m.version, precision=m.precision, provider=self.provider)

    def _expects_fp16(self) -> bool:
        image = self.manifest.image
        return any(i.name == (image.input_name if image else "") and i.type == "tensor(float16)"
                   for i in self.session.get_inputs())

    def feeds(self, images: Sequence[Image.Image], texts: Sequence[str]) -> dict[str, np.ndarray]:
        m = self.manifest
        feeds: dict[str, np.ndarray] = {}
        if m.image is not None and m.image.input_name in self._input_names:
            feeds[m.image.input_name] = images_to_batch(images, m.image).astype(self._float_type, copy=False)
        if self._text is not None:
            feeds.update({k: v for k, v in self._text(texts).items() if k in self._input_names})
        return feeds

    def predict(self, images: Sequence[Image.Image], texts: Sequence[str]) -> Prediction:
        """One ONNX Runtime call for the whole batch."""
        if len(images) != len(texts):
            raise ValueError("images and texts must be the same length")
        m = self.manifest
        outputs = [m.technique_output] + ([m.harmful_output] if m.harmful_output else [])
        result = self.session.run(outputs, self.feeds(images, texts))
        probs = np.asarray(result[0], dtype=np.float32)
        harmful = np.asarray(result[1], dtype=np.float32).reshape(-1) if m.harmful_output else None
        return Prediction(technique_probs=probs, harmful_probs=harmful)

    def warmup(self) -> None:
        """One call on a blank meme so the first real batch does not pay for lazy initialisation."""
        self.predict([Image.new("RGB", (64, 64))], ["warm up"])
