"""The learning loop's pure parts: the calibration objective on constructed cases whose answer is known, the
vectorised policy against DecisionPolicy.decide, review resolution, shadow sampling, the gate, compare."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from consumer.core.bundle import ModelBundle
from consumer.core.policy import DecisionPolicy
from consumer.core.runtime import BundleRuntime
from consumer.kafka.topic_reader import Record
from consumer.learning.calibrate import (
    ALLOW,
    BLOCK,
    REVIEW,
    best_f1_threshold,
    bump_version,
    calibrate,
    decide_all,
    decision_report,
    fit_floors,
    fit_technique_thresholds,
)
from consumer.learning.compare import compare_verdicts
from consumer.learning.promote import Gate, gate_checks
from consumer.learning.reviews import resolve
from consumer.learning.shadow import in_sample
from schemas import TECHNIQUES, Decision, ModelInfo, TechniqueScore, Verdict
from tests.memes import SEMEVAL

SEVERE = "Appeal to fear/prejudice"
PLAIN = "Smears"
CODE = {Decision.ALLOW: ALLOW, Decision.REVIEW: REVIEW, Decision.BLOCK: BLOCK}


def test_best_f1_threshold_is_the_exact_optimum_and_never_splits_equal_scores() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.2])
    positives = np.array([1, 1, 0, 1, 0], dtype=bool)
    # By hand, flagging >= 0.9: F1 .5, >= 0.8 .8, >= 0.7 .667, >= 0.3 6/7, >= 0.2 .75; the cut sits in the gap.
    assert best_f1_threshold(scores, positives) == pytest.approx((0.25, 6 / 7))
    # Two memes at the same score can only be flagged together.
    threshold, f1 = best_f1_threshold(np.array([0.5, 0.5, 0.3]), np.array([1, 0, 1], dtype=bool))
    assert (threshold, f1) == pytest.approx((0.15, 0.8))


def test_technique_thresholds_move_only_with_enough_support() -> None:
    probs = np.array([[0.9, 0.9], [0.8, 0.1], [0.2, 0.8], [0.1, 0.2]])
    gold = np.array([[1, 1], [1, 0], [0, 0], [0, 0]], dtype=bool)
    out = fit_technique_thresholds(probs, gold, np.array([0.5, 0.5]), min_support=2)
    assert out.tolist() == pytest.approx([0.5, 0.5])  # column 0: 2 positives, cut between 0.8 and 0.2;
    out = fit_technique_thresholds(probs, gold, np.array([0.4, 0.4]), min_support=2)
    assert out.tolist() == pytest.approx([0.5, 0.4])  # column 1 has 1 positive: too few, kept


def test_vectorised_decisions_equal_the_policy_on_random_scores() -> None:
    rng = np.random.default_rng(0)
    labels = list(TECHNIQUES)
    policy = DecisionPolicy(review_min_flags=2)
    probs = rng.random((300, len(labels)))
    harmful = rng.random(300)
    thresholds = rng.uniform(0.6, 0.99, len(labels))
    fast = decide_all(probs, harmful, thresholds, labels, policy)
    for i in range(300):
        techniques = [TechniqueScore(technique=n, score=float(p), threshold=float(t), flagged=bool(p >= t))
                      for n, p, t in zip(labels, probs[i], thresholds, strict=True)]
        assert fast[i] == CODE[policy.decide(techniques, float(harmful[i]))[0]], i
    assert {ALLOW, REVIEW, BLOCK} <= set(fast.tolist())


def test_review_floor_is_the_lowest_cut_within_the_review_budget() -> None:
    probs = (np.arange(1, 21) / 20).reshape(-1, 1)  # 0.05 .. 1.00, every meme flagged at 0.01
    blocked = np.isin(np.round(probs[:, 0], 2), [0.25, 0.8, 0.95])
    fit = fit_floors(probs, None, blocked, np.array([0.01]), [PLAIN], DecisionPolicy(), 0.25, None)
    # At most 5 of 20 may be reviewed: flag only 0.80, 0.85, ..., 1.00 (catching 0.8 and 0.95); any lower cut
    # reviews 6 or more, any higher one misses 0.8. The cut sits between 0.75 and 0.80.
    assert fit.target_met and fit.review_floor == pytest.approx(0.775) and fit.thresholds.tolist() == [0.775]
    assert fit.report["review_rate"] == pytest.approx(0.25) and fit.report["caught_recall"] == pytest.approx(2 / 3)
    # When a higher cut catches as many, the one with fewer reviews wins.
    fit = fit_floors(probs, None, probs[:, 0] >= 0.9, np.array([0.01]), [PLAIN], DecisionPolicy(), 0.25, None)
    assert fit.review_floor == pytest.approx(0.875) and fit.report["caught_recall"] == 1.0


def test_severe_floor_is_the_lowest_cut_reaching_the_block_precision() -> None:
    s = np.array([0.95, 0.93, 0.91, 0.89, 0.87, 0.85, 0.83, 0.81, 0.5, 0.2])
    blocked = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0], dtype=bool)
    fit = fit_floors(s.reshape(-1, 1), None, blocked, np.array([0.5]), [SEVERE], DecisionPolicy(), None, 0.75)
    # Blocks are scores >= max(floor, 0.8): from 0.87 up they are 4 of 5 right (0.8) and all 4 blocks are caught;
    # 0.85 gives 4 of 6; 0.89 is also precise enough but misses one.
    assert fit.target_met and fit.severe_floor == pytest.approx(0.86) and fit.review_floor == 0.0
    assert fit.report["block_precision"] == pytest.approx(0.8) and fit.report["block_recall"] == 1.0
    # A precision no cut reaches: the closest point is written and the target is reported as missed.
    assert not fit_floors(s.reshape(-1, 1), None, ~blocked, np.array([0.5]), [SEVERE], DecisionPolicy(),
                          None, 0.99).target_met


def test_decision_report_counts() -> None:
    d = np.array([BLOCK, BLOCK, REVIEW, REVIEW, ALLOW])
    bad = np.array([1, 0, 1, 0, 1], dtype=bool)
    r = decision_report(d, bad)
    assert (r["block_rate"], r["review_rate"], r["block_precision"], r["block_recall"]) == (0.4, 0.4, 0.5, 1 / 3)
    assert (r["review_precision"], r["caught_recall"]) == (0.5, 2 / 3)


def test_bump_version() -> None:
    assert bump_version("0.1.0") == "0.1.1" and bump_version("2.0.9") == "2.0.10" and bump_version("dev") == "dev.1"


def _review(h: str, who: str, final: str, minute: int, **extra) -> Record:
    at = (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minute)).isoformat()
    msg = {"type": "review", "review_id": f"{h}-{who}-{minute}", "content_hash": h, "event_id": f"e-{h}",
           "moderator": who, "final_decision": final, "reviewed_at": at, "labels": [], **extra}
    return Record("reviews", 0, minute, None, json.dumps(msg).encode(), 0)


def test_review_resolution_latest_per_moderator_majority_and_ties() -> None:
    retraction = {"type": "retraction", "review_id": "r", "retracts": "a-bob-3", "content_hash": "a", "moderator": "bob"}
    records = [
        _review("a", "alice", "allow", 1), _review("a", "alice", "block", 2),  # alice changed her mind: block
        _review("a", "bob", "allow", 3), Record("reviews", 0, 4, None, json.dumps(retraction).encode(), 0),
        _review("a", "carol", "block", 5),
        _review("b", "alice", "block", 6), _review("b", "bob", "allow", 7),  # a tie: a disagreement
        _review("c", "alice", "allow", 8), _review("c", "bob", "block", 9), _review("c", "carol", "block", 10),
        Record("reviews", 0, 11, None, b"not json", 0),
    ]
    res = resolve(records)
    by = {r.content_hash: r for r in res.resolved}
    assert by["a"].decision == "block" and by["a"].unanimous and len(by["a"].votes) == 2  # bob's vote was undone
    assert by["b"].decision is None and not by["b"].unanimous
    assert by["c"].decision == "block" and not by["c"].unanimous and by["c"].latest["moderator"] == "carol"
    assert [r.content_hash for r in res.labelled] == ["a", "c"]
    assert {r.content_hash for r in res.disagreements} == {"b", "c"}
    assert (res.retracted, res.invalid) == (1, 1)


def test_shadow_sample_is_deterministic_by_content_and_close_to_the_rate() -> None:
    events = [json.dumps({"event_id": f"e{i}", "image_url": f"file:///m/{i}.png", "text": "Hi"}).encode()
              for i in range(4000)]
    chosen = [in_sample(e, 0.1) for e in events]
    assert 0.08 < sum(chosen) / len(chosen) < 0.12
    repost = json.dumps({"event_id": "other", "image_url": "file:///m/7.png", "text": "  hi "}).encode()
    assert in_sample(repost, 0.1) == chosen[7]  # same reference, same normalised text: same choice
    assert chosen == [in_sample(e, 0.1) for e in events]
    assert not in_sample(b"not an event", 0.5) and in_sample(b"anything", 1.0)


def _report(f1: dict[str, float], block_precision: float, review_rate: float) -> dict:
    return {"per_technique": {k: {"f1": v} for k, v in f1.items()}, "block_precision": block_precision,
            "review_rate": review_rate}


def test_gate_checks() -> None:
    gate = Gate(max_f1_drop=0.02, min_support=5, max_precision_drop=0.02, review_budget=0.1)
    current = _report({"A": 0.60, "B": 0.50}, 0.80, 0.50)
    ok = gate_checks(gate, current, _report({"A": 0.59, "B": 0.10}, 0.79, 0.08), {"A": 9, "B": 2})
    assert all(c.passed for c in ok)  # B's drop does not count: 2 positives are too few to judge
    bad = gate_checks(gate, current, _report({"A": 0.55, "B": 0.5}, 0.70, 0.20), {"A": 9, "B": 2})
    assert [c.passed for c in bad] == [False, False, False]


def _verdict(event_id: str, decision: str, scores: list[float], version: str) -> Verdict:
    return Verdict(event_id=event_id, post_id=event_id, content_hash="h" + event_id, decision=Decision(decision),
                   model=ModelInfo(name="m", version=version),
                   techniques=[TechniqueScore(technique=n, score=s, threshold=0.5, flagged=s >= 0.5)
                               for n, s in zip(("A", "B"), scores, strict=True)])


def test_compare_agreement_rates_and_technique_deltas() -> None:
    prod = {e: _verdict(e, d, s, "1") for e, d, s in (("1", "review", [0.6, 0.2]), ("2", "review", [0.7, 0.6]),
                                                      ("3", "allow", [0.1, 0.1]), ("4", "block", [0.9, 0.9]))}
    shadow = {e: _verdict(e, d, s, "2") for e, d, s in (("1", "allow", [0.4, 0.2]), ("2", "review", [0.7, 0.6]),
                                                        ("3", "allow", [0.1, 0.1]))}
    r = compare_verdicts(prod, shadow)
    assert r["joined"] == 3 and r["decision_agreement"] == pytest.approx(2 / 3)
    assert r["confusion"] == {"allow->allow": 1, "review->allow": 1, "review->review": 1}
    assert r["decision_rates"]["review"]["change"] == pytest.approx(-1 / 3)
    assert r["per_technique"]["A"]["flag_agreement"] == pytest.approx(2 / 3)
    assert r["per_technique"]["A"]["mean_score_change"] == pytest.approx(-0.2 / 3)
    assert r["per_technique"]["B"]["flag_rate_change"] == 0.0


def test_calibrate_writes_a_new_bundle_version_that_meets_the_review_budget(tiny_bundle: Path, tmp_path: Path) -> None:
    records = json.loads((SEMEVAL / "dev.json").read_text())[:24]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    out = tmp_path / "calibrated"
    new, report = calibrate(tiny_bundle, data, out, 0.25, None, DecisionPolicy(), images=SEMEVAL / "images",
                            progress=False)
    base = ModelBundle.load(tiny_bundle)
    c = new.manifest.calibration
    assert c is not None and c.target_met and c.decisions_from == "gold_labels" and c.n_records == 24
    assert new.manifest.version == bump_version(base.manifest.version)
    assert new.fingerprint != base.fingerprint and new.manifest.files != base.manifest.files
    assert (new.root / "model.onnx").read_bytes() == (base.root / "model.onnx").read_bytes()
    assert report["after"]["review_rate"] <= 0.25 < report["before"]["review_rate"]
    # The thresholds in the manifest reproduce the reported decisions through the serving runtime itself.
    rt = BundleRuntime(new, providers="cpu")
    assert rt.thresholds.tolist() == pytest.approx(new.manifest.thresholds)
    assert c.after["review_rate"] == pytest.approx(report["after"]["review_rate"], abs=1e-6)


def test_a_bundle_without_calibration_keeps_its_fingerprint(tiny_bundle: Path) -> None:
    import hashlib

    bundle = ModelBundle.load(tiny_bundle)
    # The digest as it was computed before `calibration` existed: the manifest JSON without that key.
    doc = json.loads(bundle.manifest.model_dump_json())
    assert doc.pop("calibration") is None
    before = hashlib.sha256(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()
    assert bundle.fingerprint == before
