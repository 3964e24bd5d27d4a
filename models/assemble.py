"""Build a MemeClassifier from a config (training) or from a run folder's files (loading)."""

from collections.abc import Sequence
from pathlib import Path

from models.config import RunConfig
from models.encoders.hub import minilm_dir
from models.encoders.registry import build_image_encoder, build_text_encoder
from models.fit_heads import make_head
from models.network import MemeClassifier
from schemas.manifest import ImagePreprocessing, TextPreprocessing

# Unused modalities still get a (cheap) preprocessing spec so serving never special-cases a config.
PLACEHOLDER_IMAGE = ImagePreprocessing(size=32)


def build_model(
    cfg: RunConfig,
    n_labels: int,
    harmful: bool,
    train_texts: Sequence[str] = (),
    tokenizer_file: Path | None = None,
) -> MemeClassifier:
    image = build_image_encoder(cfg.image_encoder)
    text = build_text_encoder(cfg.text_encoder, train_texts, tokenizer_file)
    image_dim = image.out_dim if image is not None else 0
    text_dim = text.out_dim if text is not None else 0
    n_heads = len(cfg.training.seeds) if cfg.training.mode == "cached" else 1
    heads = [make_head(cfg, image_dim, text_dim, n_labels, harmful) for _ in range(n_heads)]
    return MemeClassifier(image, text, heads)


def specs(model: MemeClassifier) -> tuple[ImagePreprocessing, TextPreprocessing, Path, list[str]]:
    """(image spec, text spec, tokenizer.json, unused input names) of a model."""
    unused = []
    if model.image_encoder is not None:
        image_spec = model.image_encoder.image_spec
    else:
        image_spec, unused = PLACEHOLDER_IMAGE, ["pixel_values"]
    if model.text_encoder is not None:
        text_spec, tok = model.text_encoder.text_spec, model.text_encoder.tokenizer_file
    else:
        # Image-only: ship MiniLM's tokenizer so serving can still build the (ignored) text inputs.
        text_spec, tok, unused = (
            TextPreprocessing(max_length=8),
            minilm_dir() / "tokenizer.json",
            [*unused, "input_ids", "attention_mask"],
        )
    return image_spec, text_spec, tok, unused
