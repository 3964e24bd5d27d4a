"""MPNet in the zoo: `name_or_path: mpnet` finds scripts/install_mpnet.sh's folder and checks its sha256s.

A tiny random MPNet of the same transformers class stands in for the 440 MB weights (no download).
"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import MPNetConfig, MPNetModel

from models.config import TextEncoderConfig
from models.encoders import hub
from models.encoders.registry import build_text_encoder
from models.errors import WeightsUnavailableError
from models.preprocess import TextTokenizer

SUMMED = ("model.safetensors", "config.json", "1_Pooling/config.json")


@pytest.fixture
def weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder laid out like all-mpnet-base-v2, with a sums file of its own hashes in place of upstream's."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MEMEGUARD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MEMEGUARD_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setattr(hub, "_verified", {})
    torch.manual_seed(0)
    folder = tmp_path / "weights" / "all-mpnet-base-v2"
    tiny = MPNetConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=80)
    MPNetModel(tiny).save_pretrained(folder, safe_serialization=True)
    shutil.copyfile(hub.minilm_dir() / "tokenizer.json", folder / "tokenizer.json")  # a 30522-word vocabulary
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    sums = tmp_path / "mpnet.sha256"
    sums.write_text("".join(f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}\n" for n in SUMMED))
    monkeypatch.setattr(hub, "MPNET_SHA256", sums)
    return folder


def _encoder(**overrides: object):
    cfg = TextEncoderConfig(kind="hf", name_or_path="mpnet", pooling="mean_layers", layers=[1, 2], max_length=16)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return build_text_encoder(cfg)


def test_mpnet_shorthand_loads_the_verified_folder_and_encodes(weights: Path) -> None:
    enc = _encoder()
    assert isinstance(enc.model, MPNetModel) and enc.out_dim == 32
    assert str(weights) in enc.cache_key  # features are cached per weights folder
    ids, mask = TextTokenizer(enc.tokenizer_file, enc.text_spec)(["vote them out", "a longer meme text here"])
    with torch.inference_mode():
        feats = enc(ids, mask)
    # mean_layers: one L2-normalised block per layer, the form the MPNet sweep slices
    assert feats.shape == (2, 32)
    torch.testing.assert_close(feats[:, :16].norm(dim=-1), torch.ones(2))


def test_layers_above_the_highest_pooled_one_are_dropped_without_changing_the_features(weights: Path) -> None:
    full, first = _encoder(layers=[1, 2]), _encoder(layers=[1])
    assert len(full.model.encoder.layer) == 2 and len(first.model.encoder.layer) == 1
    ids, mask = TextTokenizer(first.tokenizer_file, first.text_spec)(["vote them out", "a longer meme text here"])
    with torch.inference_mode():
        torch.testing.assert_close(first(ids, mask), full(ids, mask)[:, :16])


def test_a_tampered_weights_file_is_refused_naming_the_hash(weights: Path) -> None:
    data = bytearray((weights / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (weights / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsUnavailableError, match="sha256 .* not the upstream .*install_mpnet.sh"):
        _encoder()


def test_missing_weights_are_one_sentence_naming_the_installer(weights: Path) -> None:
    shutil.rmtree(weights)
    with pytest.raises(WeightsUnavailableError) as info:
        _encoder()
    assert "bash scripts/install_mpnet.sh" in str(info.value) and str(info.value).count(". ") == 0


def test_the_shipped_sums_are_the_upstream_ones_the_installer_checks() -> None:
    # One file feeds both checks: scripts/install_mpnet.sh (sha256sum -c) and the load-time verification.
    lines = dict(reversed(line.split()) for line in hub.MPNET_SHA256.read_text().splitlines())
    assert set(lines) == set(SUMMED)
    assert lines["model.safetensors"].startswith("78c0197b") and lines["model.safetensors"].endswith("5658")
    assert "models/encoders/mpnet.sha256" in (Path(__file__).parents[1] / "scripts" / "install_mpnet.sh").read_text()
