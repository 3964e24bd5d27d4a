"""scoring.metrics: the one F1/AUROC implementation both consumer/ and models/ use."""

import subprocess
import sys

import numpy as np

from scoring.metrics import binary_auroc, multilabel_report


def test_report_follows_the_semeval_zero_division_rule():
    gold = np.array([[1, 0, 0], [1, 1, 0]])
    pred = np.array([[1, 1, 0], [0, 1, 0]])
    report = multilabel_report(gold, pred, ["a", "b", "c"])
    # micro: tp=2, fp=1, fn=1 -> 2*2 / (2*2 + 1 + 1)
    assert report["micro_f1"] == 4 / 6
    per = report["per_technique"]
    assert per["a"] == {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    assert per["c"]["f1"] == 1.0 and per["c"]["support"] == 0  # never present, never predicted: 1, not 0
    assert report["macro_f1"] == (2 / 3 + 2 / 3 + 1.0) / 3


def test_auroc_counts_ties_half_and_is_none_for_one_class():
    assert binary_auroc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert binary_auroc(np.array([0, 0, 1]), np.array([0.1, 0.9, 0.8])) == 0.5
    assert binary_auroc(np.array([1, 1]), np.array([0.1, 0.2])) is None


def test_scoring_imports_neither_side():
    code = ("import sys, scoring.metrics; bad = [m for m in sys.modules if m == 'torch' or "
            "m.startswith(('models', 'consumer', 'exporters'))]; sys.exit(repr(bad) if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0
