"""PyTorch -> one ONNX graph (dynamic batch and sequence), ORT graph optimisation, fp16 and int8 variants."""

import logging
import tempfile
import warnings
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

from exporters.contract import IDS, MASK, PIXELS, ExportableModel

log = logging.getLogger(__name__)

OPSET = 17  # LayerNormalization is a single op from 17 on; every ORT >= 1.14 and TensorRT 8.6+ run it

# Ops kept in fp32 in fp16 bundles: reductions, normalisation and exponentials lose range/precision
# in fp16 (sums over 64 tokens, variance, softmax/sigmoid saturation); matmuls and convs gain the most.
FP16_KEEP_FP32 = [
    "LayerNormalization", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Softmax", "Sigmoid", "Exp", "Log",
    "Erf", "CumSum",
]
# Dynamic int8 quantises weights of matrix products only: ConvInteger is slow on most CPUs and the image
# tower's convolutions are where int8 rounding hurts the flags most.
INT8_OPS = ["MatMul", "Gemm"]


def example_inputs(model: ExportableModel, batch: int = 2, seq: int = 8) -> tuple[torch.Tensor, ...]:
    """Example tensors in the model's input order; batch and seq > 1 so neither axis gets specialised."""
    size = model.image_spec.size
    by_name = {
        PIXELS: torch.randn(batch, 3, size, size),
        IDS: torch.randint(1, 100, (batch, seq), dtype=torch.long),
        MASK: torch.ones(batch, seq, dtype=torch.long),
    }
    return tuple(by_name[n] for n in model.input_names)


def dynamic_axes(model: ExportableModel) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {n: {0: "batch"} for n in [*model.input_names, *model.output_names]}
    for name in (IDS, MASK):
        if name in axes:
            axes[name][1] = "sequence"
    return axes


def export_onnx(model: ExportableModel, path: Path, opset: int = OPSET) -> Path:
    """The whole graph (image tower, text tower, fusion, heads) as one ONNX file."""
    with warnings.catch_warnings():
        # The legacy exporter warns about its own deprecation and about traced Python branches.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,  # type: ignore[arg-type]
            example_inputs(model),
            str(path),
            input_names=list(model.input_names),
            output_names=list(model.output_names),
            dynamic_axes=dynamic_axes(model),
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))
    return path


def optimize_portable(src: Path, dst: Path) -> Path:
    """ORT graph optimisation done once at export, at the level whose output is still standard ONNX.

    BASIC (constant folding, redundant node removal) runs everywhere: CPU, CUDA and TensorRT. The
    higher levels insert ORT-only fused ops that TensorRT cannot take, so the runtime applies those
    online per provider (`ORT_ENABLE_ALL` in `consumer/core/runtime.py`).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    return dst


def to_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and activations with fp32 inputs/outputs, sensitive ops left in fp32.

    Uses onnxruntime's maintained copy of onnxconverter-common's converter: the onnxconverter-common
    1.16 one leaves `Cast(to=float)` nodes inconsistent (the attention-mask cast) and ORT refuses the graph.
    """
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, op_block_list=FP16_KEEP_FP32)
    wrapped = OnnxModel(model)
    wrapped.topological_sort()  # the converter appends its Cast nodes out of order; the checker wants order
    onnx.save(wrapped.model, str(dst))
    onnx.checker.check_model(str(dst))
    return dst


def to_int8(src: Path, dst: Path) -> Path:
    """Dynamic int8 quantisation (weights int8, activations quantised per batch): a CPU speed-up."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference first so every MatMul gets quantised, not only those with known shapes.
        from onnxruntime.quantization.shape_inference import quant_pre_process

        try:
            quant_pre_process(str(src), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        except Exception as e:  # symbolic shape inference fails on some graphs; quantising as-is still works
            log.warning("int8 pre-processing skipped (%s); quantising the graph as exported", e)
            prepared = src
        # uint8 weights: with int8 weights x86 AVX2 kernels (VPMADDUBSW, u8 x s8) saturate; measured on
        # the tiny model: flag agreement 96% with QInt8, 99.9% with QUInt8.
        quantize_dynamic(str(prepared), str(dst), op_types_to_quantize=INT8_OPS, weight_type=QuantType.QUInt8)
    return dst


def build_onnx(model: ExportableModel, dst: Path, precision: str) -> Path:
    """Export, optimise and convert to `precision` in one go; only `dst` is left behind."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = export_onnx(model, Path(tmp) / "raw.onnx")
        fp32 = optimize_portable(raw, Path(tmp) / "fp32.onnx" if precision != "fp32" else dst)
        if precision == "fp16":
            to_fp16(fp32, dst)
        elif precision == "int8":
            to_int8(fp32, dst)
        elif precision != "fp32":
            raise ValueError(f"unknown precision {precision!r}")
    return dst
