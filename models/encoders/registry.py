"""Build encoders from config sections."""

from collections.abc import Sequence
from pathlib import Path

from models.config import ImageEncoderConfig, TextEncoderConfig
from models.encoders.base import ImageEncoder, TextEncoder
from models.errors import ConfigError


def build_image_encoder(cfg: ImageEncoderConfig) -> ImageEncoder | None:
    if cfg.kind == "none":
        return None
    if cfg.kind == "efficientnet_lite0":
        from models.encoders.efficientnet import EfficientNetLite0

        return EfficientNetLite0(pretrained=cfg.pretrained, size=cfg.size)
    if cfg.kind == "hf":
        from models.encoders.hf_image import HFImageEncoder

        return HFImageEncoder(cfg.name_or_path, cfg.arch, size=cfg.size, tiny=cfg.tiny)
    if cfg.kind == "vgg":
        from models.encoders.small import VGGStyle

        return VGGStyle(size=cfg.size)
    if cfg.kind == "gray_cnn":
        from models.encoders.small import GrayCNN

        return GrayCNN(size=cfg.size)
    raise ConfigError(f"image_encoder.kind {cfg.kind!r} is unknown; use none, efficientnet_lite0, hf, vgg, gray_cnn.")


def build_text_encoder(
    cfg: TextEncoderConfig, train_texts: Sequence[str] = (), tokenizer_file: Path | None = None
) -> TextEncoder | None:
    """`train_texts` feeds the BiLSTM's learned vocabulary; a saved run passes its `tokenizer_file` instead."""
    if cfg.kind == "none":
        return None
    if cfg.kind == "hf":
        from models.encoders.hf_text import HFTextEncoder

        return HFTextEncoder(cfg.name_or_path, cfg.arch, cfg.pooling, cfg.max_length, cfg.tiny, cfg.tokenizer, cfg.layers)
    if cfg.kind == "bilstm":
        from models.encoders.small import BiLSTMText, build_word_tokenizer

        if tokenizer_file is not None:
            tok = tokenizer_file
        elif train_texts:
            tok = build_word_tokenizer(train_texts, cfg.vocab_size)
        else:
            raise ConfigError("text_encoder.kind 'bilstm' needs training texts to learn its vocabulary.")
        return BiLSTMText(tok, cfg.max_length, cfg.embed_dim, cfg.hidden)
    if cfg.kind == "tfidf":
        raise ConfigError("text_encoder.kind 'tfidf' is not a neural encoder; train it with a `tfidf_svm` config.")
    raise ConfigError(f"text_encoder.kind {cfg.kind!r} is unknown; use none, hf, bilstm, tfidf.")
