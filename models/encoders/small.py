"""Small encoders written in torch and trained from scratch: VGG16-style CNN, grayscale CNN, BiLSTM."""

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from torch import nn

from models.encoders.base import HALF, ImageEncoder, TextEncoder, masked_mean
from models.paths import cache_dir
from schemas.manifest import ImagePreprocessing, TextPreprocessing


def _conv_block(c_in: int, c_out: int, n_convs: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
    return layers + [nn.MaxPool2d(2)]


class VGGStyle(ImageEncoder):
    """VGG16's pattern (stacks of 3×3 convs, 2×2 pooling, widths doubling) at a CPU-trainable width."""

    def __init__(self, size: int = 128, width: int = 16) -> None:
        super().__init__()
        widths, convs = [width, width * 2, width * 4, width * 8, width * 8], [2, 2, 3, 3, 3]
        layers: list[nn.Module] = []
        c_in = 3
        for w, n in zip(widths, convs, strict=True):
            layers += _conv_block(c_in, w, n)
            c_in = w
        self.features = nn.Sequential(*layers)
        self.out_dim = c_in
        self.image_spec = ImagePreprocessing(size=size, mean=HALF, std=HALF)
        self.cache_key = f"vgg-style-{size}-{width}"

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.features(pixel_values).mean(dim=(2, 3))


class GrayCNN(ImageEncoder):
    """64×64 grayscale CNN; takes the shared RGB input and converts it inside the graph (one interface)."""

    def __init__(self, size: int = 64) -> None:
        super().__init__()
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1))
        self.features = nn.Sequential(*_conv_block(1, 16, 1), *_conv_block(16, 32, 1), *_conv_block(32, 64, 1))
        self.out_dim = 64
        self.image_spec = ImagePreprocessing(size=size, mean=HALF, std=HALF)
        self.cache_key = f"gray-cnn-{size}"

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        gray = (pixel_values * self.luma).sum(1, keepdim=True)
        return self.features(gray).mean(dim=(2, 3))


def build_word_tokenizer(texts: Sequence[str], vocab_size: int) -> Path:
    """A lower-cased word-level `tokenizer.json` learned from the training texts (serving loads the file)."""
    digest = hashlib.sha256(("\x00".join(texts) + str(vocab_size)).encode()).hexdigest()[:12]
    target = cache_dir() / "tokenizers" / f"words-{digest}" / "tokenizer.json"
    if target.is_file():
        return target
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # [PAD] first so that padding id 0 (what `enable_padding()` uses on both sides) is the pad token.
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]"], min_frequency=1)
    tok.train_from_iterator(texts, trainer)
    target.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(target))
    return target


class BiLSTMText(TextEncoder):
    """Embedding → bidirectional LSTM → masked mean of the states (a learned-vocabulary baseline)."""

    def __init__(self, tokenizer_file: Path, max_length: int = 64, embed_dim: int = 128, hidden: int = 128) -> None:
        super().__init__()
        vocab = Tokenizer.from_file(str(tokenizer_file)).get_vocab_size()
        self.embed = nn.Embedding(vocab, embed_dim, padding_idx=0)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.out_dim = 2 * hidden
        self.tokenizer_file = tokenizer_file
        self.text_spec = TextPreprocessing(max_length=max_length)
        self.cache_key = f"bilstm-{tokenizer_file.parent.name}-{embed_dim}-{hidden}"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(self.embed(input_ids))
        return masked_mean(states, attention_mask)
