"""The replay report page (issue 29 item 9): the replay micro-F1 is shown with what it measures (in-sample or
not) beside the bundle's cross-validated estimate, and a chart with no data is not drawn empty. No broker: the
page is rendered from report dicts as `consumer.replay.run.replay` builds them."""

import re

import numpy as np

from consumer.evaluate.run import TrainingPool
from consumer.replay.html import render
from consumer.replay.report import EventInfo, ReplayResult, build_report, figure_context
from schemas import TECHNIQUES, Verdict

# The default bundle's manifest `expected` (.cache/bundles/default/manifest.json, from models/expected.py).
EXPECTED = {"expected_micro_f1": 0.6129, "expected_micro_f1_sd": 0.0197, "expected_micro_f1_low": 0.5743,
            "expected_micro_f1_high": 0.6515, "expected_macro_f1": 0.2932, "expected_macro_f1_sd": 0.0296}


def verdict(i: int, flagged: set[str], harmful_score: float | None) -> Verdict:
    return Verdict.model_validate({
        "event_id": f"e{i}", "post_id": f"p{i}", "model": {"name": "m", "version": "1"}, "content_hash": f"h{i}",
        "techniques": [{"technique": t, "score": 0.9 if t in flagged else 0.1, "threshold": 0.5, "flagged": t in flagged}
                       for t in TECHNIQUES],
        "harmful_score": harmful_score, "decision": "review" if flagged else "allow",
        "timings_ms": {"total": 10.0 + i}})


def replayed(labels: list[list[str]] | None, harmful_score: float | None = 0.5, pool: TrainingPool | None = None,
             expected: dict[str, float] | None = None) -> tuple[dict, dict]:
    n = 4 if labels is None else len(labels)
    result = ReplayResult(model="m", training_pool=pool, expected=expected or {}, topic="memes.labelled", wall_s=1.0)
    events = {}
    for i in range(n):
        gold = None if labels is None else labels[i]
        result.verdicts[f"e{i}"] = verdict(i, set(gold or []) if i % 2 else {TECHNIQUES[0]}, harmful_score)
        events[f"e{i}"] = EventInfo(f"e{i}", f"p{i}", "t", "inline", gold, None if gold is None else bool(gold))
    report = build_report(result, events, TECHNIQUES)
    scores = {"harmful": [(events[v.event_id].harmful, v.harmful_score) for v in result.verdicts.values()
                          if v.harmful_score is not None and events[v.event_id].harmful is not None],
              "latency": [(True, v.timings_ms["total"]) for v in result.verdicts.values()]}
    return report, scores


LABELS = [[TECHNIQUES[0]], [TECHNIQUES[1]], [], [TECHNIQUES[0], TECHNIQUES[2]]]


def test_replay_figure_on_training_memes_is_labelled_in_sample_beside_the_nested_cv_estimate():
    pool = TrainingPool(["semeval:train", "semeval:dev"], frozenset(f"h{i}" for i in range(4)))
    report, scores = replayed(LABELS, pool=pool, expected=EXPECTED)
    context = report["micro_f1_context"]
    assert context["sample"] == "in-sample" and "4 of 4 replayed memes" in context["label"]
    assert context["expected_micro_f1"] == 0.6129 and context["expected_micro_f1_interval_95"] == [0.5743, 0.6515]
    page = render([report], [scores], "memes.labelled")
    section = page[page.index("<h2>Technique micro-F1 in context</h2>"):page.index("<h2>Summary</h2>")]
    assert f"<td>{report['micro_f1']:.4f}</td>" in section
    assert "in-sample: 4 of 4 replayed memes are in the bundle&#39;s training data (semeval:train, semeval:dev)" in section
    assert "0.613 ± 0.020 (95% interval 0.574–0.651)" in section and "nested cross-validation" in section


def test_held_out_and_unknown_training_data_are_labelled_as_such():
    held, _ = replayed(LABELS, pool=TrainingPool(["semeval:train"], frozenset({"other"})), expected=EXPECTED)
    assert held["micro_f1_context"]["sample"] == "held-out"
    unknown, scores = replayed(LABELS, pool=None, expected={})
    assert unknown["micro_f1_context"]["sample"] == "unknown"
    assert "replayed topic memes.labelled: may be in-sample" in unknown["micro_f1_context"]["label"]
    page = render([unknown], [scores], "memes.labelled")
    assert "the bundle states no cross-validated estimate" in page
    assert figure_context({"n_in_training_pool": 1, "n_scored": 3}, {}, "t")["sample"] == "partly in-sample"


def test_a_chart_without_data_is_omitted_with_one_sentence_not_drawn_empty():
    # Labelled memes, but the bundle has no harm head: no harmful score, so no harm chart.
    report, scores = replayed(LABELS, harmful_score=None)
    assert scores["harmful"] == []
    page = render([report], [scores], "t")
    assert len(re.findall(r'<img class="plot"', page)) == 3  # per-technique F1, decisions, latency
    assert re.search(r'<p class="omitted">Harmful score by gold class: not drawn, no replayed verdict has both '
                     r"a harmful score and a gold harm label[^<]*</p>", page)
    assert 'alt="Harmful score by gold class"' not in page
    # No labels at all: neither the per-technique chart nor the harm chart is drawn.
    report, scores = replayed(None)
    page = render([report], [scores], "t")
    assert "Per-technique F1: not drawn, no replayed event carries technique labels" in page
    assert "Harmful score by gold class: not drawn" in page
    assert len(re.findall(r'<img class="plot"', page)) == 2
    assert "Technique micro-F1 in context" not in page  # no labelled figure to put in context


def test_every_chart_with_data_is_drawn():
    report, scores = replayed(LABELS)
    page = render([report], [scores], "t")
    assert len(re.findall(r'<img class="plot"', page)) == 4 and "not drawn" not in page
    assert np.isfinite(report["micro_f1"])
