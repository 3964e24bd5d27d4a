"""Assemble a model bundle: ONNX graph, tokenizer, golden set, parity report, manifest with sha256s.

Everything is written into a staging folder next to the target and renamed into place at the end, so a
watcher never sees a half-written bundle and a failed export leaves the old bundle untouched.
"""

import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Literal

import onnxruntime as ort

from consumer.core.bundle import MANIFEST, ModelBundle, digest_files
from consumer.core.runtime import BundleRuntime
from exporters.contract import HARMFUL_OUT, TECHNIQUE_OUT, ExportableModel
from exporters.errors import ExportError, ParityError
from exporters.golden import write_golden
from exporters.memes import Meme
from exporters.onnx_export import OPSET, build_onnx
from exporters.parity import check_parity
from schemas import BundleManifest, InputSpec
from schemas.manifest import OutputSpec, RuntimeSettings

log = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "int8"]
ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
PROVENANCE = ("thresholds.json", "preprocessing.json", "metrics.json", "training_pool.json")  # copied under run/
_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}


def _say(show: bool, message: str) -> None:
    if show:
        print(f"[export] {message}", file=sys.stderr, flush=True)


def _input_specs(onnx_path: Path) -> list[InputSpec]:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return [InputSpec(name=i.name, dtype=_DTYPES[i.type], shape=list(i.shape)) for i in session.get_inputs()]


def _copy_run_files(run_dir: Path, staging: Path) -> None:
    tokenizer = run_dir / "tokenizer" / TOKENIZER_FILE
    if not tokenizer.is_file():
        raise ExportError(
            f"Run {run_dir} has no tokenizer/{TOKENIZER_FILE}; it is not a finished training run."
        )
    shutil.copyfile(tokenizer, staging / TOKENIZER_FILE)
    for name in PROVENANCE:
        if (run_dir / name).is_file():
            (staging / "run").mkdir(exist_ok=True)
            shutil.copyfile(run_dir / name, staging / "run" / name)


def _replace_dir(staging: Path, out_dir: Path) -> None:
    """Rename staging into place; an existing bundle is moved aside first and deleted after."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_bundle(
    model: ExportableModel,
    run_dir: Path,
    out_dir: Path,
    precision: Precision = "fp32",
    parity_memes: list[Meme] | None = None,
    golden_memes: list[Meme] | None = None,
    version: str = "0.1.0",
    parity_split: str = "dev",
    show_progress: bool = True,
    overwrite: bool = True,
) -> BundleManifest:
    """Export `model` (the whole graph) to a verified bundle at `out_dir`; raises ParityError on a gap."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir} already exists; pass --force to replace it or choose another --out.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _say(show_progress, f"1/4 ONNX export of {model.name} ({precision}, opset {OPSET})")
        build_onnx(model, staging / ONNX_FILE, precision)
        _copy_run_files(Path(run_dir), staging)
        has_harmful = bool(model.has_harmful_head) and HARMFUL_OUT in model.output_names
        declared = getattr(model, "extra_outputs", [])
        outputs = [OutputSpec(name=TECHNIQUE_OUT, role="techniques", kind="multilabel", labels=list(model.labels),
                              thresholds=[float(t) for t in model.thresholds])]
        outputs += [OutputSpec.model_validate(o) for o in declared]
        if has_harmful and not declared:  # a fused binary column (Hateful Memes format), threshold 0.5
            outputs.append(OutputSpec(name=HARMFUL_OUT, role="harm", kind="binary", labels=["harmful"],
                                      thresholds=[0.5]))
        manifest = BundleManifest(
            name=model.name, version=version, training_run_id=model.run_id, labels=list(model.labels),
            thresholds=[float(t) for t in model.thresholds], onnx_file=ONNX_FILE,
            inputs=_input_specs(staging / ONNX_FILE), technique_output=TECHNIQUE_OUT,
            harmful_output=HARMFUL_OUT if has_harmful else None, image=model.image_spec,
            text=model.text_spec.model_copy(update={"tokenizer_file": TOKENIZER_FILE}),
            precision=precision, opset=OPSET, trained=bool(getattr(model, "trained", bool(model.metrics))),
            metrics=dict(model.metrics), runtime=RuntimeSettings(trt_fp16=precision == "fp16"),
            outputs=outputs, policy=getattr(model, "policy", None), expected=dict(getattr(model, "expected", {})),
        )
        # Golden outputs and parity come from the serving runtime itself, on CPU (reproducible here).
        runtime = BundleRuntime(ModelBundle(root=staging, manifest=manifest), providers="cpu")
        if golden_memes:
            _say(show_progress, f"2/4 golden set: {len(golden_memes)} memes")
            manifest = manifest.model_copy(update={"golden": write_golden(runtime, golden_memes, precision)})
        if parity_memes:
            _say(show_progress, f"3/4 parity vs PyTorch on {len(parity_memes)} memes ({parity_split})")
            summary, details = check_parity(model, runtime, parity_memes, precision, parity_split,
                                            progress=show_progress)
            (staging / "parity.json").write_text(json.dumps(details, indent=1, ensure_ascii=False))
            manifest = manifest.model_copy(update={"parity": summary})
            if not summary.passed:
                report = out_dir.with_name(f"{out_dir.name}.parity-failed.json")
                shutil.copyfile(staging / "parity.json", report)
                raise ParityError(
                    f"{precision} export of {model.name} fails parity on {parity_split}: max |diff| "
                    f"{summary.max_abs_diff:.2e} (limit {summary.max_abs_diff_limit}), flag agreement "
                    f"{summary.flag_agreement:.4f} (minimum {summary.min_flag_agreement}). Details: {report}"
                )
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        manifest = manifest.model_copy(update={"files": digest_files(staging, files)})
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        ModelBundle.load(staging)  # the bundle must pass the same checks the worker applies
        staging.chmod(0o755)  # mkdtemp makes it private; the worker may run as another user
        _replace_dir(staging, out_dir)
        _say(show_progress, f"4/4 bundle written: {out_dir}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest
