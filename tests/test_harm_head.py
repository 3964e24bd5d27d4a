"""The harm head: its in-graph token view equals the training-time TF-IDF, it learns a signal, it exports, and
`memeguard evaluate` scores a HarMeme-format file (synthetic texts here: HarMeme's own hold slurs)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from models.harm import HarmConfig, HarmInputs, fit_harm_head, predict_harm, token_presence

VOCAB, DIM = 50, 8


def synthetic(n: int, seed: int = 0) -> tuple[HarmInputs, np.ndarray, np.ndarray, np.ndarray]:
    """Severity driven by token 7 (and feature 0), so a working head must rank by it."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(n, 12))
    mask = (rng.random((n, 12)) < 0.8).astype(np.int64)
    mask[:, 0] = 1
    has = ((ids == 7) & (mask == 1)).any(1)
    severity = np.where(has, rng.choice([1, 2], size=n, p=[0.8, 0.2]), 0)
    features = rng.normal(size=(n, DIM)).astype(np.float32)
    features[:, 0] += severity
    return HarmInputs(features, token_presence(ids, mask, VOCAB)), severity, ids, mask


def test_the_graph_computes_what_training_fitted():
    inputs, severity, ids, mask = synthetic(400)
    head = fit_harm_head(inputs, severity, HarmConfig(c_features=0.5, c_tokens=5.0))
    p_np, sev_np = predict_harm(head, inputs)
    with torch.inference_mode():
        p_t, sev_t = head(torch.as_tensor(inputs.features), torch.as_tensor(ids), torch.as_tensor(mask))
    np.testing.assert_allclose(p_t.numpy(), p_np, atol=1e-5)
    np.testing.assert_allclose(sev_t.numpy(), sev_np, atol=1e-5)
    np.testing.assert_allclose(sev_np.sum(1), 1.0, atol=1e-5)


def test_it_learns_the_signal_and_not_noise():
    train, sev_train, _, _ = synthetic(600, seed=1)
    test, sev_test, _, _ = synthetic(300, seed=2)
    head = fit_harm_head(train, sev_train, HarmConfig(c_features=0.5, c_tokens=5.0))
    p, _ = predict_harm(head, test)
    assert roc_auc_score(sev_test > 0, p) > 0.9
    shuffled = np.random.default_rng(3).permutation(sev_train)
    p_noise, _ = predict_harm(fit_harm_head(train, shuffled, HarmConfig(c_features=0.5, c_tokens=5.0)), test)
    assert roc_auc_score(sev_test > 0, p_noise) < 0.7


def test_every_severity_must_occur_in_training_data():
    inputs, severity, _, _ = synthetic(100)
    with pytest.raises(ValueError, match="three severities"):
        fit_harm_head(inputs, np.minimum(severity, 1), HarmConfig())


def test_evaluate_scores_a_harmeme_file_from_text_alone(tmp_path: Path):
    from consumer.core.runtime import BundleRuntime
    from consumer.evaluate.run import main
    from exporters.testing import write_tiny_bundle

    bundle = write_tiny_bundle(tmp_path / "harm", seed=1, severity_head=True)
    rng = np.random.default_rng(0)
    words = ["vote", "freedom", "liar", "never", "again", "they", "want", "your", "money", "truth"]
    levels = ["not harmful", "somewhat harmful", "very harmful"]
    data = tmp_path / "harm_x_val.jsonl"
    rows = [{"id": f"m{i}", "image": f"m{i}.png", "labels": [levels[i % 3], "individual"],
             "text": " ".join(rng.choice(words, size=5))} for i in range(30)]
    rows.append({"id": "unlabelled", "image": "u.png", "labels": [], "text": "x"})
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["--bundle", str(bundle), "--data", str(data), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    preds = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [p["id"] for p in preds] == [f"m{i}" for i in range(30)] and report["n_skipped_no_severity"] == 1
    assert {p["severity"] for p in preds} <= set(levels)
    assert all(p["harmful"] == (p["harmful_score"] >= 0.5) for p in preds)
    assert {p["decision"] for p in preds} <= {"allow", "review", "block"}
    truth = [i % 3 > 0 for i in range(30)]
    assert report["binary"]["auroc"] == pytest.approx(roc_auc_score(truth, [p["harmful_score"] for p in preds]))
    assert report["policy"] == "tiny-harm-v1"
    # The scores are the serving runtime's for the text with a neutral image.
    runtime = BundleRuntime.load(bundle, providers="cpu")
    from PIL import Image

    pred = runtime.predict([Image.new("RGB", (224, 224), (128, 128, 128))], [rows[0]["text"]])
    assert preds[0]["harmful_score"] == pytest.approx(float(pred.harmful_probs[0]), abs=1e-6)


def test_a_bundle_without_a_harm_head_is_refused_for_harmeme_files(tmp_path: Path, tiny_bundle: Path, capsys):
    from consumer.evaluate.run import main

    data = tmp_path / "harm_y.jsonl"
    data.write_text(json.dumps({"id": "a", "image": "a.png", "labels": ["not harmful"], "text": "hi"}) + "\n")
    assert main(["--bundle", str(tiny_bundle), "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert "no harm and severity outputs" in capsys.readouterr().err
