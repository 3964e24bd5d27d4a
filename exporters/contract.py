"""What the exporter needs from a trained model (the `models.inference.load_for_export` contract)."""

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from schemas import ImagePreprocessing, TextPreprocessing

PIXELS, IDS, MASK = "pixel_values", "input_ids", "attention_mask"
TECHNIQUE_OUT, HARMFUL_OUT, SEVERITY_OUT = "technique_probs", "harmful_prob", "severity_probs"


@runtime_checkable
class ExportableModel(Protocol):
    """An eval-mode module holding the WHOLE inference graph (encoders, fusion, heads).

    forward(pixel_values f32[B,3,S,S], input_ids i64[B,L], attention_mask i64[B,L])
      -> technique_probs f32[B,22]  or  (technique_probs, harmful_prob f32[B] [, severity_probs f32[B,3]])
    Outputs beyond the techniques are declared by an optional `extra_outputs` list (schemas.manifest.OutputSpec
    fields); an optional `policy` (schemas.policy.DecisionPolicy) travels into the manifest.
    """

    name: str
    run_id: str | None
    labels: list[str]
    thresholds: list[float]
    input_names: list[str]
    output_names: list[str]
    image_spec: ImagePreprocessing
    text_spec: TextPreprocessing
    metrics: dict[str, float]
    has_harmful_head: bool

    def __call__(self, *args: Any) -> Any: ...


Loader = Callable[[str], ExportableModel]


def torch_outputs(
    model: ExportableModel, feeds: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the PyTorch model on exactly the numpy feeds ONNX Runtime gets; probabilities out."""
    args = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in model.input_names]
    with torch.inference_mode():
        out = model(*args)
    if isinstance(out, tuple | list):
        probs, harmful = out[0], out[1] if len(out) > 1 else None
    else:
        probs, harmful = out, None
    harmful_np = harmful.float().reshape(-1).numpy() if harmful is not None else None
    return probs.float().numpy(), harmful_np
