"""Hub-weight configs: offline they fail with one sentence; tiny random configs of the same classes train."""

from pathlib import Path

import pytest
import torch
import yaml

from models.assemble import build_model
from models.config import config_from_dict, load_config
from models.encoders.hub import minilm_dir
from models.encoders.registry import build_image_encoder, build_text_encoder
from models.errors import WeightsUnavailableError
from models.fit_e2e import Inputs, fit_end_to_end

REPO = Path(__file__).resolve().parents[1]
OFFLINE_SHORTHANDS = ("name_or_path: minilm", "name_or_path: mpnet")  # weights installed by scripts/install*.sh
HUB_CONFIGS = sorted(
    p for p in (REPO / "configs").glob("*.yaml")
    if "kind: hf" in p.read_text() and not any(s in p.read_text() for s in OFFLINE_SHORTHANDS)
)
BERT_TOKENIZER = str(minilm_dir() / "tokenizer.json")  # 30522-word vocabulary for tiny text models

TINY_TEXT = {
    "albert": {
        "arch": "auto",
        "tiny": {
            "model_type": "albert",
            "vocab_size": 30522,
            "hidden_size": 16,
            "embedding_size": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
        },
    },
    "roberta": {
        "arch": "auto",
        "tiny": {
            "model_type": "roberta",
            "vocab_size": 30522,
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
        },
    },
    "mpnet": {
        "arch": "auto",
        "tiny": {
            "model_type": "mpnet",
            "vocab_size": 30522,
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
        },
    },
    "t5": {
        "arch": "t5",
        "tiny": {"vocab_size": 30522, "d_model": 16, "d_kv": 8, "d_ff": 32, "num_layers": 1, "num_heads": 2},
    },
    "clip": {
        "arch": "clip",
        "tiny": {
            "vocab_size": 30522,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "projection_dim": 8,
            "eos_token_id": 102,
        },
    },
}
TINY_IMAGE = {
    "clip": {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "patch_size": 8,
        "projection_dim": 8,
    },
    "vit": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "patch_size": 8},
    "dinov2": {"hidden_size": 16, "mlp_ratio": 2, "num_hidden_layers": 1, "num_attention_heads": 2, "patch_size": 8},
    "resnet": {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "layer_type": "basic"},
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MEMEGUARD_CACHE_DIR", str(tmp_path))
    torch.set_num_threads(1)


def test_there_is_a_config_per_published_hub_approach() -> None:
    names = {load_config(p).name for p in HUB_CONFIGS}
    assert {
        "resnet50-albert-focal",
        "clip-concat",
        "clip-align",
        "clip-cross",
        "clip-inpaint",
        "clip-multimodal",
        "dinov2-sentence-t5",
        "vit-mpnet",
        "roberta-text",
    } <= names


@pytest.mark.parametrize("path", HUB_CONFIGS, ids=lambda p: p.stem)
def test_hub_config_offline_fails_with_one_sentence_naming_the_weights(path: Path) -> None:
    cfg = load_config(path)
    with pytest.raises(WeightsUnavailableError) as info:
        build_image_encoder(cfg.image_encoder)
        build_text_encoder(cfg.text_encoder)
    message = str(info.value)
    assert message.count(". ") == 0 and "huggingface-cli download" in message
    assert cfg.image_encoder.name_or_path in message or cfg.text_encoder.name_or_path in message


@pytest.mark.parametrize(
    ("image_arch", "text_arch", "fusion"),
    [
        ("resnet", "albert", "concat"),
        ("resnet-frozen", "albert", "concat"),
        ("clip", "clip", "cross"),
        ("dinov2", "t5", "align"),
        ("vit", "mpnet", "late"),
        (None, "roberta", "concat"),
    ],
)
def test_tiny_random_configs_of_the_same_classes_train_a_step(image_arch: str | None, text_arch: str, fusion: str) -> None:
    raw = {
        "name": "tiny",
        "text_encoder": {
            "kind": "hf",
            "name_or_path": "unused",
            "tokenizer": BERT_TOKENIZER,
            "max_length": 12,
            **TINY_TEXT[text_arch],
        },
        "head": {"fusion": fusion, "hidden": 8, "proj_dim": 8, "cross_dim": 4, "dropout": 0.0},
        "loss": {"kind": "focal"},
        "training": {"mode": "finetune", "epochs": 1, "batch_size": 4, "lr": 1e-2, "encoder_lr": 1e-3},
    }
    frozen = bool(image_arch and image_arch.endswith("-frozen"))
    if image_arch:
        arch = image_arch.removesuffix("-frozen")
        raw["image_encoder"] = {
            "kind": "hf",
            "arch": arch,
            "name_or_path": "unused",
            "size": 32,
            "tiny": TINY_IMAGE[arch],
            "frozen": frozen,
        }
    cfg = config_from_dict(raw)
    model = build_model(cfg, 22, harmful=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(1000, 2000, (6, 10))
    inputs = Inputs(torch.randn(6, 3, 32, 32), ids, torch.ones_like(ids))
    y = (torch.rand(6, 22) > 0.7).float().numpy()
    trained = fit_end_to_end(cfg, lambda: model, inputs, y, None, torch.arange(6).numpy(), None)
    changed = [k for k, v in trained.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert any(k.startswith("text_encoder") for k in changed) and any(k.startswith("heads") for k in changed)
    if image_arch:
        # A frozen tower (the ResNet50 + ALBERT write-up) keeps its weights and BatchNorm statistics.
        assert any(k.startswith("image_encoder") for k in changed) != frozen
    with torch.inference_mode():
        assert trained(inputs.pixels[:2], ids[:2], torch.ones_like(ids[:2])).shape == (2, 22)


def test_every_config_file_parses() -> None:
    for path in (REPO / "configs").glob("*.yaml"):
        cfg = load_config(path)
        assert cfg.name and yaml.safe_load(path.read_text())["name"] == cfg.name
