"""Every fusion type of `models/` exports to one ONNX graph that matches PyTorch (tiny random encoders)."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
assemble = pytest.importorskip("models.assemble")
config = pytest.importorskip("models.config")
inference = pytest.importorskip("models.inference")

from consumer.core.bundle import ModelBundle  # noqa: E402
from exporters.bundle_writer import export_bundle  # noqa: E402
from exporters.testing import synthetic_memes, tiny_tokenizer_json  # noqa: E402
from schemas import TECHNIQUES  # noqa: E402

TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "vocab_size": 30522}
TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
            "patch_size": 8}


def _tiny_exportable(fusion: str, harmful: bool, tokenizer: Path):
    cfg = config.config_from_dict({
        "name": f"tiny-{fusion}",
        "image_encoder": {"kind": "hf", "arch": "vit", "size": 32, "tiny": TINY_VIT},
        "text_encoder": {"kind": "hf", "name_or_path": "minilm", "tiny": TINY_BERT, "max_length": 24},
        "head": {"fusion": fusion, "hidden": 16, "proj_dim": 16, "cross_dim": 4},
        "training": {"mode": "finetune", "seeds": [0]},
    })
    model = assemble.build_model(cfg, len(TECHNIQUES), harmful, (), tokenizer).eval()
    image_spec, text_spec, _, unused = assemble.specs(model)
    return inference.ExportableModel(
        model, name=cfg.name, run_id=cfg.name, labels=list(TECHNIQUES), thresholds=[0.5] * len(TECHNIQUES),
        image_spec=image_spec, text_spec=text_spec, metrics={}, unused_inputs=unused,
    )


@pytest.mark.parametrize("fusion,harmful", [("concat", True), ("align", False), ("cross", False),
                                            ("late", True)])
def test_fusion_type_round_trips_with_parity(fusion: str, harmful: bool, tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "tokenizer").mkdir(parents=True)
    (run / "tokenizer" / "tokenizer.json").write_text(tiny_tokenizer_json())
    try:
        model = _tiny_exportable(fusion, harmful, run / "tokenizer" / "tokenizer.json")
    except (TypeError, AttributeError, ImportError) as e:  # the models API moved: say so, do not hide it
        pytest.fail(f"models API changed for fusion {fusion}: {e}")
    memes = synthetic_memes(10, seed=1)
    manifest = export_bundle(model, run, tmp_path / "b", parity_memes=memes, golden_memes=memes[:2],
                             show_progress=False)
    assert manifest.parity is not None and manifest.parity.passed
    assert manifest.parity.max_abs_diff <= 1e-4
    assert (manifest.harmful_output is not None) == harmful
    assert np.isfinite(manifest.parity.mean_abs_diff)
    ModelBundle.load(tmp_path / "b")
