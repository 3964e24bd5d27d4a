"""The model bundle's manifest: the only thing the worker knows about a model."""

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.policy import DecisionPolicy
from schemas.version import SCHEMA_VERSION

OutputRole = Literal["techniques", "harm", "severity"]


class InputSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    dtype: Literal["float32", "float16", "int64"]
    shape: list[int | str] = Field(description="Symbolic names (e.g. 'batch') mark dynamic axes.")


class ImagePreprocessing(BaseModel):
    """Decode → RGB → resize (shorter side, then centre crop) → scale to [0,1] → normalise → CHW."""

    model_config = ConfigDict(frozen=True)

    input_name: str = "pixel_values"
    size: int = 224
    resize_mode: Literal["squash", "shorter_side_center_crop"] = "squash"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


class TextPreprocessing(BaseModel):
    """Tokenise with the bundle's `tokenizer.json` (HF `tokenizers`), pad/truncate to max_length."""

    model_config = ConfigDict(frozen=True)

    tokenizer_file: str = "tokenizer.json"
    max_length: int = 64
    input_ids_name: str = "input_ids"
    attention_mask_name: str = "attention_mask"
    lowercase: bool = False


class FileDigest(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str
    sha256: str
    bytes: int


class RuntimeSettings(BaseModel):
    """How the worker should run the graph; TensorRT profiles cover these shapes so engines are built once."""

    model_config = ConfigDict(frozen=True)

    min_batch: int = Field(default=1, ge=1)
    opt_batch: int = Field(default=16, ge=1, description="Batch size TensorRT tunes its kernels for.")
    max_batch: int = Field(default=64, ge=1, description="Largest batch the worker sends in one call.")
    trt_fp16: bool = Field(default=False, description="Let TensorRT build fp16 kernels (fp16 bundles do).")
    engine_cache_dir: str = Field(
        default="trt_cache", description="TensorRT engine cache, relative to the bundle unless absolute."
    )


class GoldenSet(BaseModel):
    """A few real memes (image + text) inside the bundle with the outputs recorded at export time."""

    model_config = ConfigDict(frozen=True)

    file: str = "golden/golden.json"
    count: int
    atol: float = Field(description="Largest |recorded - recomputed| probability a reload still accepts.")


class PrecisionParity(BaseModel):
    """ONNX Runtime (this bundle's precision) against PyTorch eager on the same preprocessed inputs."""

    model_config = ConfigDict(frozen=True)

    split: str = Field(description="Data the check ran on, e.g. 'semeval2021_task6/dev.json (63 memes)'.")
    n_memes: int
    max_abs_diff: float
    mean_abs_diff: float
    flag_agreement: float = Field(description="Share of (meme, technique) flags equal to PyTorch's.")
    micro_f1_torch: float | None = None
    micro_f1_onnx: float | None = None
    micro_f1_change: float | None = None
    max_abs_diff_limit: float | None = None
    min_flag_agreement: float
    passed: bool


class Calibration(BaseModel):
    """How `memeguard calibrate` fitted this bundle's decision policy from another bundle (docs/learning.md).

    The graph, files and technique thresholds are the base bundle's, unchanged; only `policy` was fitted.
    `before` / `after`: figures of the base policy and of the fitted one on the fitting part, `held_back_*` on the
    held-back part, `*_at_base` expected at `base_rate`, and `technique_micro_f1` where the data has technique
    labels. (Records written before the policy was fitted carry `review_floor` / `severe_floor`; ignored.)"""

    model_config = ConfigDict(frozen=True)

    base_bundle: str = Field(description="`name@version+digest` of the bundle whose graph and thresholds it started.")
    base_thresholds: list[float]
    base_policy: str | None = Field(None, description="id of the policy the fit started from.")
    data: str = Field(description="The labelled data it was fitted on, e.g. 'reviews dataset (412 records)'.")
    n_records: int
    decisions_from: Literal["moderators", "gold_labels", "harm_labels"] = Field(
        description="moderators: review decisions; gold_labels: a stand-in derived from technique labels; "
                    "harm_labels: HarMeme's somewhat / very harmful.")
    target: dict[str, float] = Field(
        description="e.g. {'review_rate': 0.1} (review + block at the base rate) or {'block_precision': 0.9}.")
    target_met: bool
    base_rate: float | None = Field(None, description="Expected share of harmful memes on the feed.")
    base_rate_from: Literal["flag", "data"] = "data"
    holdout: float = Field(0.0, description="Share of the data held back from the fit.")
    n_held_back: int = 0
    before: dict[str, float] = Field(default_factory=dict, description="Figures of the base bundle's policy.")
    after: dict[str, float] = Field(default_factory=dict, description="The same figures for this bundle's policy.")


class OutputSpec(BaseModel):
    """One declared output of the graph; serving fills the verdict from these, by role.

    - `techniques`: multilabel, one probability and threshold per technique (`labels`, `thresholds`);
    - `harm`: binary P(harmful), one threshold (the `harmful` flag of `memeguard evaluate`);
    - `severity`: categorical, probabilities over `labels` (not / somewhat / very harmful).
    """

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="ONNX output name.")
    role: OutputRole
    kind: Literal["multilabel", "binary", "categorical"]
    labels: list[str]
    thresholds: list[float] = Field(default_factory=list)
    trained_on: str | None = Field(None, description="The data this head was fitted on.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Its cross-validated figures.")


class BundleManifest(BaseModel):
    model_config = ConfigDict(frozen=True)

    schema_version: str = SCHEMA_VERSION
    name: str
    version: str = Field(description="Semantic version; part of the Redis de-duplication key.")
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    training_run_id: str | None = None
    labels: list[str] = Field(description="Technique names in the order of the model's output columns.")
    thresholds: list[float]
    onnx_file: str = "model.onnx"
    inputs: list[InputSpec]
    technique_output: str = "technique_probs"
    harmful_output: str | None = Field(default=None, description="Output name of a binary head, if any.")
    image: ImagePreprocessing | None = None
    text: TextPreprocessing | None = None
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    opset: int = 17
    trained: bool = Field(description="False for a bundle exported from an untrained network (demo only).")
    metrics: dict[str, float] = Field(default_factory=dict, description="Figures measured at training time.")
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    golden: GoldenSet | None = None
    parity: PrecisionParity | None = Field(
        default=None, description="Export-time check against PyTorch; details in parity.json."
    )
    files: list[FileDigest] = Field(default_factory=list)
    calibration: Calibration | None = Field(default=None, description="Set by `memeguard calibrate`.")
    outputs: list[OutputSpec] = Field(
        default_factory=list, description="Declared outputs; derived from the fields above for older bundles.")
    policy: DecisionPolicy | None = Field(
        default=None, description="The decision policy served with this model (MEMEGUARD_POLICY_FILE overrides).")
    expected: dict[str, float] = Field(
        default_factory=dict,
        description="Outer-fold estimates of nested CV, e.g. expected_micro_f1 with its interval (docs/models.md).")

    @model_validator(mode="before")
    @classmethod
    def _declare_legacy_outputs(cls, raw: object) -> object:
        """Bundles exported before `outputs` existed declare their techniques (and binary head) implicitly."""
        if isinstance(raw, dict) and not raw.get("outputs") and "labels" in raw:
            outputs = [{"name": raw.get("technique_output", "technique_probs"), "role": "techniques",
                        "kind": "multilabel", "labels": raw["labels"], "thresholds": raw.get("thresholds", [])}]
            if raw.get("harmful_output"):
                outputs.append({"name": raw["harmful_output"], "role": "harm", "kind": "binary",
                                "labels": ["harmful"], "thresholds": [0.5]})
            raw = {**raw, "outputs": outputs}
        return raw

    @model_validator(mode="after")
    def _outputs_agree(self) -> "BundleManifest":
        if len(self.labels) != len(self.thresholds):
            raise ValueError(f"{len(self.labels)} labels but {len(self.thresholds)} thresholds")
        roles = [o.role for o in self.outputs]
        if len(set(roles)) != len(roles):
            raise ValueError(f"each output role may be declared once, got {roles}")
        tech = self.output("techniques")
        if tech is None or tech.labels != self.labels or list(tech.thresholds) != list(self.thresholds):
            raise ValueError("the techniques output must declare the manifest's labels and thresholds")
        if tech.name != self.technique_output:
            raise ValueError("the techniques output must be the manifest's technique_output")
        return self

    def output(self, role: OutputRole) -> OutputSpec | None:
        return next((o for o in self.outputs if o.role == role), None)

    def with_thresholds(self, thresholds: list[float]) -> "BundleManifest":
        """A copy whose technique thresholds are `thresholds`, in both places that declare them."""
        outputs = [o.model_copy(update={"thresholds": list(thresholds)}) if o.role == "techniques" else o
                   for o in self.outputs]
        return self.model_copy(update={"thresholds": list(thresholds), "outputs": outputs})
