"""ONNX Runtime inference over a model bundle: provider choice, preprocessing, one batched call."""

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from consumer.core.bundle import ModelBundle
from consumer.core.preprocess import TextEncoder, images_to_batch
from consumer.errors import BundleError, ConfigError
from schemas import BundleManifest, ModelInfo

log = logging.getLogger(__name__)

TENSORRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
PROVIDER_PREFERENCE = (TENSORRT, CUDA, CPU)
ProviderSpec = tuple[str, dict[str, Any]]
# How ONNX Runtime holds memory between calls. The worker's input shapes change with nearly every batch (its
# size, the text padded to the batch's longest), and by default ORT plans and keeps a memory pattern per
# shape and never gives its CPU arena back: RSS climbs (the soak's 321 MiB -> 2.26 GiB). Measured on the
# default bundle, 60 batches of 64 (bench/bench_memory.py, bench/results/memory.json), RSS after warm-up / max:
# - "bounded" (serving): no memory patterns, and the CPU arena is shrunk back after each call
#   (`memory.enable_memory_arena_shrinkage`): 304 / 336 MiB, flat, at the same speed (0.99x).
# - "no_mem_pattern": patterns off, arena kept: 1173 / 1305 MiB.
# - "no_arena": plain malloc per tensor: 512 / 932 MiB (glibc fragmentation).
# - "ort_default": ONNX Runtime's defaults: 1842 / 1974 MiB.
MEMORY_MODES = ("bounded", "no_mem_pattern", "no_arena", "ort_default")
# Those figures are sampled between calls. During a call at batch 64 the worker's RSS was ~1.6 GiB (the
# worker-level soak, bench_soak_before.json: docs/benchmarks.md, History): CPU calls are capped at this many
# memes instead.
CPU_CALL_BATCH = 16


@dataclass(frozen=True)
class Prediction:
    """The declared outputs of one call, by role (schemas.manifest.OutputSpec)."""

    technique_probs: np.ndarray  # [B, n_labels] float32
    harmful_probs: np.ndarray | None  # [B] float32, when the bundle declares a `harm` output
    severity_probs: np.ndarray | None = None  # [B, 3] float32, when it declares a `severity` output

    @staticmethod
    def concat(parts: "list[Prediction]") -> "Prediction":
        def cat(arrays: list[np.ndarray | None]) -> np.ndarray | None:
            return None if arrays[0] is None else np.concatenate(arrays)  # type: ignore[arg-type]

        return Prediction(
            technique_probs=np.concatenate([p.technique_probs for p in parts]),
            harmful_probs=cat([p.harmful_probs for p in parts]),
            severity_probs=cat([p.severity_probs for p in parts]),
        )


def profile_shapes(manifest: BundleManifest, max_batch: int | None = None) -> dict[str, str]:
    """TensorRT optimisation-profile shapes (min/opt/max) for every input, in ORT's `name:AxBxC` syntax.

    One profile spanning batch 1..max_batch and sequence 1..max_length means TensorRT builds its engine
    once and every batch the worker sends fits it; without profiles it rebuilds for each new shape.
    """
    rt = manifest.runtime
    top = max_batch or rt.max_batch
    seq = manifest.text.max_length if manifest.text is not None else 1
    sizes = {
        "min": {"batch": rt.min_batch, "sequence": 1},
        "opt": {"batch": min(rt.opt_batch, top), "sequence": seq},
        "max": {"batch": top, "sequence": seq},
    }
    out: dict[str, str] = {}
    for kind, dims in sizes.items():
        parts = []
        for spec in manifest.inputs:
            try:
                shape = [d if isinstance(d, int) else dims[d] for d in spec.shape]
            except KeyError as e:
                raise BundleError(
                    f"Input {spec.name} has an axis {e} the runtime cannot size for TensorRT."
                ) from e
            parts.append(f"{spec.name}:{'x'.join(str(d) for d in shape)}")
        out[f"trt_profile_{kind}_shapes"] = ",".join(parts)
    return out


def provider_plan(
    requested: str,
    available: Sequence[str],
    manifest: BundleManifest,
    engine_cache: Path,
    max_batch: int | None = None,
) -> list[ProviderSpec]:
    """Pure: which execution providers to ask ONNX Runtime for, in order, with their options.

    `auto` takes the fastest one this onnxruntime build offers (TensorRT > CUDA > CPU) and keeps the
    slower ones behind it for nodes the faster one cannot run; a name (`tensorrt`, `cuda`, `cpu`)
    forces that provider and is a ConfigError if this build lacks it (and BundleRuntime refuses to start if
    ONNX Runtime then cannot activate it).
    """
    if requested == "auto":
        names = [p for p in PROVIDER_PREFERENCE if p in available]
    else:
        wanted = [p for p in PROVIDER_PREFERENCE if p.lower().startswith(requested.lower())]
        if not wanted or wanted[0] not in available:
            raise ConfigError(
                f"Execution provider {requested!r} (MEMEGUARD_PROVIDERS) is not available in this onnxruntime "
                f"build (have: {list(available)}). Use MEMEGUARD_PROVIDERS=auto, or install onnxruntime-gpu "
                f"(alone: never together with onnxruntime) on a host with a GPU."
            )
        start = PROVIDER_PREFERENCE.index(wanted[0])
        names = [p for p in PROVIDER_PREFERENCE[start:] if p in available]
    plan: list[ProviderSpec] = []
    for name in names:
        if name == TENSORRT:
            plan.append((name, {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(engine_cache),
                # The timing cache makes rebuilding an engine for a new bundle much faster.
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(engine_cache),
                "trt_fp16_enable": manifest.runtime.trt_fp16,
                **profile_shapes(manifest, max_batch),
            }))
        elif name == CUDA:
            # EXHAUSTIVE (the default) re-benchmarks cuDNN kernels for every new input shape, which
            # stalls the first batch of each new size; HEURISTIC picks at once.
            plan.append((name, {"cudnn_conv_algo_search": "HEURISTIC"}))
        else:
            plan.append((name, {}))
    return plan


def session_options(intra_op_threads: int = 0, memory: str = "bounded") -> tuple[ort.SessionOptions, ort.RunOptions]:
    """Session and per-call options for serving; `memory` is one of MEMORY_MODES (see there)."""
    if memory not in MEMORY_MODES:
        raise ConfigError(f"memory mode {memory!r} is not one of {MEMORY_MODES}")
    options, run = ort.SessionOptions(), ort.RunOptions()
    # Export applied the portable optimisations; the provider-specific fusions happen here, online.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    # ORT's threads otherwise spin for a while after each call, waiting for the next one: on a CPU host that
    # burns the cores the worker's decode threads and event loop need between calls (and other processes').
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if memory != "ort_default":
        options.enable_mem_pattern = False
    if memory == "bounded":
        run.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    if memory == "no_arena":
        options.enable_cpu_mem_arena = False
    return options, run


def engine_cache_dir(bundle: ModelBundle, root: Path | None = None) -> Path:
    """Engines are per bundle and per GPU: under `root` when one is configured (MEMEGUARD_TRT_ENGINE_CACHE_DIR,
    a writable volume in the GPU image, so engines outlive the container), else next to the bundle when
    writable, else in the user's cache."""
    if root is not None:
        return Path(root) / bundle.fingerprint[:16]
    configured = Path(bundle.manifest.runtime.engine_cache_dir)
    if configured.is_absolute():
        return configured
    if os.access(bundle.root, os.W_OK):
        return bundle.root / configured
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "memeguard" / "trt" / bundle.fingerprint[:16]


class BundleRuntime:
    """Everything the worker needs from a model: `predict(images, texts)` and its identity."""

    def __init__(
        self,
        bundle: ModelBundle,
        providers: str = "auto",
        intra_op_threads: int = 0,
        max_batch: int | None = None,
        memory: str = "bounded",
        engine_cache_root: Path | None = None,
    ) -> None:
        self.bundle = bundle
        m = bundle.manifest
        self.max_batch = max_batch or m.runtime.max_batch
        options, self._run_options = session_options(intra_op_threads, memory)
        self.engine_cache_root = engine_cache_root
        self.engine_cache = cache = engine_cache_dir(bundle, engine_cache_root)
        plan = provider_plan(providers, ort.get_available_providers(), m, cache, max_batch)
        if any(name == TENSORRT for name, _ in plan):
            cache.mkdir(parents=True, exist_ok=True)
        if any(name != "CPUExecutionProvider" for name, _ in plan) and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # onnxruntime-gpu[cuda,cudnn]: the CUDA/cuDNN wheels' libraries, before the session
        try:
            self.session = ort.InferenceSession(
                str(bundle.onnx_path), options,
                providers=[name for name, _ in plan], provider_options=[opts for _, opts in plan],
            )
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise BundleError(f"ONNX Runtime could not load {bundle.onnx_path}: {e}") from e
        # ORT silently falls back to CPU when CUDA libraries are missing: a provider forced by name must be
        # the one running, or the worker does not start (a GPU host serving at CPU speed is an outage).
        self.provider = self.session.get_providers()[0]
        if self.provider != plan[0][0]:
            if providers != "auto":
                raise ConfigError(
                    f"MEMEGUARD_PROVIDERS={providers} forces {plan[0][0]}, but ONNX Runtime could not activate it "
                    f"for {bundle.onnx_path} and would run on {self.provider}: check the CUDA/cuDNN/TensorRT "
                    f"libraries and the GPU (ONNX Runtime's warnings above say which), or set "
                    f"MEMEGUARD_PROVIDERS=auto to accept the fallback.")
            log.warning("asked for %s but ONNX Runtime runs %s on %s", plan[0][0], m.name, self.provider)
        log.info("model %s loaded on %s (precision %s)", self.version, self.provider, m.precision)
        self._input_names = {i.name for i in self.session.get_inputs()}
        self._text = TextEncoder(bundle.root, m.text) if m.text is not None else None
        self._float_type = np.float16 if self._expects_fp16() else np.float32
        # On the CPU provider a call's activations grow with its batch (~1 GiB at 64 for the default bundle,
        # handed back after the call by the `bounded` memory mode) while throughput does not (docs/benchmarks.md,
        # batching): calls there are at most CPU_CALL_BATCH memes; GPU providers take max_batch at once.
        self.call_batch = min(self.max_batch, CPU_CALL_BATCH) if self.provider == CPU else self.max_batch
        self.thresholds = np.asarray(m.thresholds, dtype=np.float32)
        # The declared outputs serving reads (roles, ONNX names), resolved once rather than per call.
        declared = {o.role: o.name for o in m.outputs}
        roles = [r for r in ("techniques", "harm", "severity") if r in declared]
        self._outputs = (roles, [declared[r] for r in roles])

    @classmethod
    def load(
        cls, path: Path | str, providers: str = "auto", intra_op_threads: int = 0,
        max_batch: int | None = None, memory: str = "bounded", engine_cache_root: Path | None = None,
    ) -> "BundleRuntime":
        return cls(ModelBundle.load(path), providers=providers, intra_op_threads=intra_op_threads,
                   max_batch=max_batch, memory=memory, engine_cache_root=engine_cache_root)

    @property
    def manifest(self) -> BundleManifest:
        return self.bundle.manifest

    @property
    def version(self) -> str:
        """`name@version+digest`: part of the de-duplication key. The digest of the ONNX file makes it
        change with the bundle even when someone re-exports under the same semantic version."""
        return f"{self.manifest.name}@{self.manifest.version}+{self.bundle.fingerprint[:8]}"

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

    def run_feeds(self, feeds: dict[str, np.ndarray]) -> Prediction:
        """One ONNX Runtime call on already preprocessed inputs (the exporter's parity check uses it)."""
        roles, names = self._outputs
        result = dict(zip(roles, self.session.run(names, feeds, self._run_options), strict=True))
        harmful, severity = result.get("harm"), result.get("severity")
        return Prediction(
            technique_probs=np.asarray(result["techniques"], dtype=np.float32),
            harmful_probs=None if harmful is None else np.asarray(harmful, dtype=np.float32).reshape(-1),
            severity_probs=None if severity is None else np.asarray(severity, dtype=np.float32),
        )

    def predict(self, images: Sequence[Image.Image], texts: Sequence[str]) -> Prediction:
        """One ONNX Runtime call per `call_batch` memes (`max_batch`, where TensorRT's profile ends; on the CPU
        provider at most CPU_CALL_BATCH)."""
        if len(images) != len(texts):
            raise ValueError("images and texts must be the same length")
        step = self.call_batch
        if len(images) <= step:
            return self.run_feeds(self.feeds(images, texts))
        return Prediction.concat(
            [self.predict(images[i:i + step], texts[i:i + step]) for i in range(0, len(images), step)])

    def flags(self, prediction: Prediction) -> np.ndarray:
        """bool [B, n_labels]: a technique is flagged when its probability reaches its threshold."""
        return prediction.technique_probs >= self.thresholds

    def warmup(self) -> None:
        """One call on a blank meme so the first real batch does not pay for lazy initialisation."""
        self.predict([Image.new("RGB", (64, 64))], ["warm up"])
