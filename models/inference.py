"""`load_for_export(run_dir)`: the whole inference graph of a trained run, ready for `torch.onnx.export`."""

from pathlib import Path

import torch
from torch import nn

from models.assemble import build_model
from models.errors import NotExportableError, RunError
from models.harm import HarmHead
from models.network import MemeClassifier
from models.run_dir import TOKENIZER, load_checkpoint, read_run
from schemas.manifest import ImagePreprocessing, TextPreprocessing
from schemas.policy import DecisionPolicy


class ExportableModel(nn.Module):
    """forward(pixel_values f32[B,3,S,S], input_ids i64[B,L], attention_mask i64[B,L]) → technique_probs
    f32[B,22] (sigmoid applied), or (technique_probs, harmful_prob f32[B]) when `has_harmful_head`."""

    def __init__(
        self,
        model: MemeClassifier,
        name: str,
        run_id: str,
        labels: list[str],
        thresholds: list[float],
        image_spec: ImagePreprocessing,
        text_spec: TextPreprocessing,
        metrics: dict[str, float],
        unused_inputs: list[str],
        harm_outputs: tuple[dict, ...] = (),
        policy: DecisionPolicy | None = None,
        expected: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.name, self.run_id, self.labels, self.thresholds = name, run_id, labels, thresholds
        self.image_spec, self.text_spec, self.metrics = image_spec, text_spec, metrics
        self.has_harmful_head = model.has_harmful_head or model.harm_head is not None
        self.unused_inputs = unused_inputs
        self.input_names = [image_spec.input_name, text_spec.input_ids_name, text_spec.attention_mask_name]
        self.output_names = ["technique_probs"]
        if self.has_harmful_head:
            self.output_names.append("harmful_prob")
        if model.harm_head is not None:
            self.output_names.append("severity_probs")
        # What the bundle manifest declares beyond the techniques (schemas.manifest.OutputSpec fields).
        self.extra_outputs: list[dict] = list(harm_outputs)
        self.policy, self.expected = policy, dict(expected or {})  # carried into the manifest
        self.eval()

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.model(pixel_values, input_ids, attention_mask)
        # The exporter prunes inputs a graph never reads; a zero-weighted touch keeps all three inputs
        # in every model so serving has one interface (costs one slice, not a pass over the image).
        keep = pixel_values[:, :1, 0, 0] * 0.0 + (input_ids[:, :1] + attention_mask[:, :1]).to(torch.float32) * 0.0
        if isinstance(out, tuple):
            return (out[0] + keep, out[1] + keep[:, 0], *out[2:])
        return out + keep


def load_model(run_dir: Path) -> tuple[MemeClassifier, object]:
    """(network with trained weights, run files) — shared by `load_for_export` and `evaluate`."""
    files = read_run(run_dir)
    cfg = files.config
    if cfg.text_encoder.kind == "tfidf":
        raise NotExportableError(
            f"Run {run_dir} is a TF-IDF + linear SVM baseline, not a neural network; it has no ONNX graph — "
            "export a neural config (e.g. configs/default.yaml) instead."
        )
    ckpt = load_checkpoint(run_dir)
    tok = run_dir / TOKENIZER
    model = build_model(cfg, len(files.labels), files.harmful_threshold is not None, (), tok if tok.is_file() else None)
    try:
        if ckpt["mode"] == "cached":
            model.heads.load_state_dict(ckpt["heads"])
        else:
            model.load_state_dict(ckpt["state_dict"])
        if "harm_head" in ckpt:
            harm = HarmHead(model.text_dim, ckpt["harm_head"]["idf"].shape[0])
            harm.load_state_dict(ckpt["harm_head"])
            model.attach_harm_head(harm.eval())
    except (KeyError, RuntimeError) as e:
        raise RunError(f"Checkpoint of {run_dir} does not match its config.yaml ({e}); retrain the run.") from e
    return model.eval(), files


def load_for_export(run_dir: Path | str) -> ExportableModel:
    run_dir = Path(run_dir)
    model, files = load_model(run_dir)
    return ExportableModel(
        model,
        name=files.config.name,
        run_id=str(files.info.get("run_id", files.config.name)),
        labels=files.labels,
        thresholds=[float(t) for t in files.thresholds],
        image_spec=files.image_spec,
        text_spec=files.text_spec,
        metrics=files.metrics,
        unused_inputs=files.unused_inputs,
        harm_outputs=tuple(files.info.get("harm_outputs", ())) if model.harm_head is not None else (),
        policy=DecisionPolicy.model_validate(files.info["policy"]) if "policy" in files.info else None,
        expected=files.info.get("expected", {}),
    )
