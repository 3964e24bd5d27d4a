"""The quality sweep's model blocks on tiny random inputs (no weights, no data)."""

import numpy as np
import torch

from models.quality_features import masked_max
from research.sweep_quality import LabelAttention, label_attention_fitter, per_label_choice
from research.sweep_table import SweepTable


def test_masked_max_ignores_padding() -> None:
    h = torch.tensor([[[1.0, -5.0], [9.0, 9.0]]])  # second token is padding
    assert masked_max(h, torch.tensor([[1, 0]])).tolist() == [[1.0, -5.0]]


def test_label_attention_scores_every_label_and_ignores_padding() -> None:
    torch.manual_seed(0)
    m = LabelAttention(torch.randn(3, 4), global_dim=2)
    torch.nn.init.normal_(m.w)
    tok, g = torch.randn(2, 5, 4), torch.randn(2, 2)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = m(tok, mask, g)
    assert out.shape == (2, 3)
    changed = tok.clone()
    changed[0, 3:] = 100.0  # padding positions of meme 0
    assert torch.allclose(m(changed, mask, g)[0], out[0])
    assert not torch.allclose(m(tok, torch.ones_like(mask), g)[0], out[0])


def test_label_attention_fitter_learns_a_token_cue() -> None:
    rng = np.random.default_rng(0)
    n, d = 40, 8
    y = np.zeros((n, 2), np.float32)
    y[: n // 2, 0] = 1
    y[:, 1] = 1 - y[:, 0]
    tokens = [rng.normal(scale=0.3, size=(3, d)).astype(np.float16) for _ in range(n)]
    for i in range(n // 2):
        tokens[i][1, 0] = 6.0  # one cue token marks label 0
    fit = label_attention_fitter(tokens, rng.normal(size=(2, d)), np.zeros((n, 1)), y, epochs=150, wd=0.0, lr=3e-2)
    tr, te = np.arange(0, n, 2), np.arange(1, n, 2)
    probs = fit(tr, te)
    assert probs.shape == (len(te), 2)
    assert ((probs[:, 0] > 0.5) == (y[te, 0] > 0)).mean() >= 0.9


def test_per_label_choice_takes_each_labels_better_member() -> None:
    y = np.array([[1, 0], [0, 1]] * 10, np.float32)

    def good_for(j: int):
        def fit(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
            out = np.full((len(te), 2), 0.5, np.float32)
            out[:, j] = y[te, j]
            return out
        return fit

    fit = per_label_choice([good_for(0), good_for(1)], y)
    te = np.arange(10, 20)
    np.testing.assert_array_equal(fit(np.arange(10), te), y[te])


def test_sweep_table_scores_rows_fold_by_fold_against_the_default() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((60, 3)) < 0.4).astype(np.int64)
    table = SweepTable(y, folds=3, seed=0, default="default")
    table.run("default", lambda tr, te: y[te].astype(np.float32), "cmd")  # an oracle: every fold perfect
    table.run("noise", lambda tr, te: rng.random((len(te), 3)).astype(np.float32), "cmd")
    table.ensemble("ens", "cmd", "default", "noise")
    default, noise, ens = table.rows
    assert default["cv_micro_f1"] == 1.0 and "vs_default_folds_better" not in default
    assert noise["cv_micro_f1"] < 0.8
    assert noise["vs_default_folds_better"] == 0 and noise["vs_default_fold_micro_diff_mean"] < -0.2
    assert ens["members"] == ["default", "noise"] and ens["cv_micro_f1"] > noise["cv_micro_f1"]
