"""The model bundle's manifest: the only thing the worker knows about a model."""

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.version import SCHEMA_VERSION


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
    files: list[FileDigest] = Field(default_factory=list)
