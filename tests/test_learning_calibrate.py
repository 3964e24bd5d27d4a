"""The learning loop's pure parts and `memeguard calibrate`: the policy's harm cut-offs fitted on constructed
cases whose answer is computed by hand (review budget and block precision at a base rate), the vectorised policy
against DecisionPolicy.decide, the held-back split, and a calibrated bundle written from the tiny bundle (technique
thresholds unchanged, exit status by target); then shadow sampling, the gate, compare."""

import json
from pathlib import Path

import numpy as np
import pytest

from consumer.cli import main as memeguard
from consumer.core.bundle import ModelBundle
from consumer.core.policy import DecisionPolicy
from consumer.core.runtime import BundleRuntime
from consumer.learning.calibrate import (
    ALLOW,
    BLOCK,
    REVIEW,
    Scored,
    bump_version,
    calibrate,
    decide_all,
    decision_report,
    figures,
    fit_policy,
    score_data,
    split,
    target_check,
    technique_report,
)
from consumer.learning.compare import compare_verdicts
from consumer.learning.promote import Gate, gate_checks
from consumer.learning.shadow import in_sample
from schemas import TECHNIQUES, Decision, ModelInfo, TechniqueScore, Verdict
from tests.memes import SEMEVAL

CODE = {Decision.ALLOW: ALLOW, Decision.REVIEW: REVIEW, Decision.BLOCK: BLOCK}
LABELS = list(TECHNIQUES)
# Harm rules only: techniques alone send nothing to review, nothing blocks unless fitted to.
HARM_ONLY = DecisionPolicy(id="start", harm_review=0.5, harm_block=1.0, severity_block=1.0, review_min_flags=0)


def _scored(pos: list[float], neg: list[float], severity: np.ndarray | None = None) -> Scored:
    """Harm scores of harmful (`pos`) and harmless (`neg`) memes; no technique reaches its threshold."""
    harm = np.array(pos + neg, dtype=np.float32)
    n = len(harm)
    return Scored(ids=[str(i) for i in range(n)], labels=LABELS, probs=np.zeros((n, len(LABELS)), np.float32),
                  harmful=harm, gold=np.zeros((n, len(LABELS)), bool), truth=np.arange(n) < len(pos),
                  decisions_from="harm_labels", source="constructed", severity=severity,
                  groups=[str(i) for i in range(n)], technique_labels=False)


def test_vectorised_decisions_equal_the_policy_on_random_scores() -> None:
    rng = np.random.default_rng(0)
    n = 400
    probs = rng.random((n, len(LABELS))).astype(np.float32)
    harmful = rng.random(n).astype(np.float32)
    severity = rng.dirichlet([1, 1, 1], n).astype(np.float32)
    thresholds = rng.uniform(0.6, 0.99, len(LABELS)).astype(np.float32)
    policies = [DecisionPolicy(review_min_flags=2), HARM_ONLY,
                DecisionPolicy(harm_review=0.3, harm_block=0.8, severity_block=0.5, technique_review_min_score=0.9,
                               review_min_flags=0, block_min_score=0.85)]
    seen = set()
    for policy in policies:
        for harm, sev in ((harmful, severity), (harmful, None), (None, None)):
            fast = decide_all(probs, harm, thresholds, LABELS, policy, sev)
            for i in range(n):
                techniques = [TechniqueScore(technique=name, score=float(p), threshold=float(t), flagged=bool(p >= t))
                              for name, p, t in zip(LABELS, probs[i], thresholds, strict=True)]
                slow = policy.decide(techniques, None if harm is None else float(harm[i]),
                                     None if sev is None else [float(v) for v in sev[i]])
                assert fast[i] == CODE[slow[0]], (policy.id, i)
            seen |= set(fast.tolist())
    assert seen == {ALLOW, REVIEW, BLOCK}


def test_review_cutoff_is_the_lowest_within_the_budget_at_the_base_rate() -> None:
    s = _scored(pos=[0.9, 0.8, 0.7, 0.6, 0.2], neg=[0.85, 0.5, 0.4, 0.3, 0.1])
    th = np.full(len(LABELS), 0.5, np.float32)
    # By hand, at base rate p = 0.2, flagged(p) = 0.2 * caught + 0.8 * (harmless flagged):
    #   cut in (0.85, 0.9): 0.2*1/5 = 0.04; (0.8, 0.85): 0.04 + 0.8*1/5 = 0.20; (0.7, 0.8): 0.08 + 0.16 = 0.24;
    #   (0.6, 0.7): 0.12 + 0.16 = 0.28; (0.5, 0.6): 0.16 + 0.16 = 0.32 -> a budget of 0.30 takes the cut between
    #   0.6 and 0.7 (3 of 5 harmful caught), although it flags 4 of 10 = 0.40 of the data.
    fit = fit_policy(s, th, HARM_ONLY, 0.2, 0.30, None)
    assert fit.target_met and fit.policy.harm_review == pytest.approx(0.65)
    assert fit.figures["flagged_rate_at_base"] == pytest.approx(0.28)
    assert fit.figures["flagged_rate"] == pytest.approx(0.4) and fit.figures["harmful_caught"] == pytest.approx(0.6)
    assert fit.figures["allow_rate_at_base"] == pytest.approx(0.72) and fit.figures["review_rate"] == pytest.approx(0.4)
    # On the data's own base rate (0.5) the same budget allows less: (0.12 + 0.5*0.2 = 0.22 at 0.75; 0.30 + 0.10 =
    # 0.40 at 0.65): the cut between 0.7 and 0.8, 2 of 5 caught... and only the block/harm rules moved.
    fit = fit_policy(s, th, HARM_ONLY, 0.5, 0.30, None)
    assert fit.policy.harm_review == pytest.approx(0.75) and fit.figures["flagged_rate_at_base"] == pytest.approx(0.3)
    assert (fit.policy.harm_block, fit.policy.severity_block, fit.policy.review_min_flags) == (1.0, 1.0, 0)


def test_a_budget_the_technique_rules_alone_exceed_is_not_met() -> None:
    s = _scored(pos=[0.9, 0.8], neg=[0.3, 0.1])
    probs = s.probs.copy()
    probs[:, 5] = 0.9  # every meme flags one technique, and the policy reviews any flag
    s = Scored(s.ids, s.labels, probs, s.harmful, s.gold, s.truth, s.decisions_from, s.source)
    fit = fit_policy(s, np.full(len(LABELS), 0.5, np.float32), DecisionPolicy(review_min_flags=1, harm_block=1.0),
                     0.05, 0.10, None)
    assert not fit.target_met and fit.policy.harm_review == 1.0 and fit.figures["flagged_rate_at_base"] == 1.0
    assert any("review_min_flags 1" in note for note in fit.notes)


def test_block_cutoff_reaches_the_precision_at_the_base_rate() -> None:
    s = _scored(pos=[0.95, 0.9, 0.8, 0.6], neg=[0.85, 0.7, 0.5, 0.3, 0.2, 0.1])
    th = np.full(len(LABELS), 0.5, np.float32)
    # By hand, precision(p) = p*TPR / (p*TPR + (1-p)*FPR), for a block cut between consecutive scores:
    #   p = 0.5: (0.9,0.95) 1.0 (TPR 1/4); (0.85,0.9) 1.0 (TPR 2/4); (0.8,0.85) .25/(.25+.5/6) = 0.75;
    #            (0.7,0.8) .375/(.375+.5/6) = 0.818; (0.6,0.7) .375/(.375+1/6) = 0.692; (0.5,0.6) .5/(.5+1/6) = 0.75;
    #            (0.3,0.5) .5/(.5+.25) = 0.667  -> P = 0.7 blocks every harmful meme with the cut at 0.55;
    #   p = 0.2: (0.85,0.9) 1.0 (TPR 2/4); (0.8,0.85) .1/(.1+.8/6) = 0.43; (0.5,0.6) .2/(.2+.8/3) = 0.43 -> 0.875.
    fit = fit_policy(s, th, HARM_ONLY, 0.5, None, 0.7, min_blocked=1)
    assert fit.target_met and fit.policy.harm_block == pytest.approx(0.55)
    assert fit.figures["block_precision_at_base"] == pytest.approx(0.75)
    assert fit.figures["block_precision"] == pytest.approx(4 / 6) and fit.figures["block_recall"] == 1.0
    fit = fit_policy(s, th, HARM_ONLY, 0.2, None, 0.7, min_blocked=1)
    assert fit.target_met and fit.policy.harm_block == pytest.approx(0.875)
    assert fit.figures["block_precision_at_base"] == 1.0 and fit.figures["block_recall"] == 0.5
    assert fit.policy.harm_review == HARM_ONLY.harm_review  # no budget asked: the review cut-off is kept


def test_blocking_nothing_never_passes_a_precision_target_when_harmful_memes_exist() -> None:
    s = _scored(pos=[0.95, 0.9, 0.8, 0.6], neg=[0.85, 0.7, 0.5, 0.3, 0.2, 0.1])
    th = np.full(len(LABELS), 0.5, np.float32)
    # Only the top two are blocked precisely enough at p = 0.2; three blocks are asked for.
    fit = fit_policy(s, th, HARM_ONLY, 0.2, None, 0.7, min_blocked=3)
    assert not fit.target_met and fit.policy.harm_block == 1.0 and fit.figures["blocked"] == 0
    assert fit.figures["block_precision_at_base"] == 1.0  # vacuous: 0 of 0 ...
    assert any("blocking nothing" in note for note in fit.notes)  # ... and still not a pass
    nothing = figures(np.full(10, ALLOW), s.truth, 0.2)
    assert not target_check(nothing, s.truth, None, 0.5, 1)[0]
    assert target_check(nothing, np.zeros(10, bool), None, 0.5, 1)[0]  # no harmful meme: nothing to block
    # A very-harmful score is searched with it: a severity cut-off blocks the two very-harmful memes alone.
    severity = np.tile([0.8, 0.15, 0.05], (10, 1)).astype(np.float32)
    severity[[1, 2], :] = [0.1, 0.3, 0.6]
    fit = fit_policy(_scored([0.95, 0.9, 0.8, 0.6], [0.85, 0.7, 0.5, 0.3, 0.2, 0.1], severity), th, HARM_ONLY,
                     0.2, None, 0.7, min_blocked=3)
    assert fit.target_met and fit.figures["blocked"] == 3 and fit.figures["block_recall"] == 0.75
    assert fit.policy.harm_block == pytest.approx(0.925) and fit.policy.severity_block == pytest.approx(0.325)


def test_held_back_split_is_seeded_stratified_and_keeps_equal_texts_together() -> None:
    n = 100
    truth = np.arange(n) % 4 == 0
    s = Scored([str(i) for i in range(n)], LABELS, np.zeros((n, len(LABELS)), np.float32), None,
               np.zeros((n, len(LABELS)), bool), truth, "harm_labels", "x",
               groups=[f"text:{i // 2}" for i in range(n)])  # pairs of memes share a text
    fit, held = split(s, 0.3, seed=0)
    assert sorted(fit.tolist() + held.tolist()) == list(range(n)) and 25 <= len(held) <= 35
    assert all((i in held) == (i ^ 1 in held) for i in range(n))  # a text never on both sides
    assert 0.15 <= truth[held].mean() <= 0.35 and 0.15 <= truth[fit].mean() <= 0.35
    assert split(s, 0.3, seed=0)[1].tolist() == held.tolist() and split(s, 0.3, seed=1)[1].tolist() != held.tolist()
    assert split(s, 0.0, seed=0)[1].size == 0


def test_decision_report_counts() -> None:
    d = np.array([BLOCK, BLOCK, REVIEW, REVIEW, ALLOW])
    bad = np.array([1, 0, 1, 0, 1], dtype=bool)
    r = decision_report(d, bad)
    assert (r["block_rate"], r["review_rate"], r["block_precision"], r["block_recall"]) == (0.4, 0.4, 0.5, 1 / 3)
    assert (r["review_precision"], r["caught_recall"]) == (0.5, 2 / 3)


def test_bump_version() -> None:
    assert bump_version("0.1.0") == "0.1.1" and bump_version("2.0.9") == "2.0.10" and bump_version("dev") == "dev.1"


# Review resolution is tested on signed reviews: tests/test_reviews_authentic.py.


def test_shadow_sample_is_deterministic_by_content_and_close_to_the_rate() -> None:
    events = [json.dumps({"event_id": f"e{i}", "image_url": f"file:///m/{i}.png", "text": "Hi"}).encode()
              for i in range(4000)]
    chosen = [in_sample(e, 0.1) for e in events]
    assert 0.08 < sum(chosen) / len(chosen) < 0.12
    repost = json.dumps({"event_id": "other", "image_url": "file:///m/7.png", "text": "  hi "}).encode()
    assert in_sample(repost, 0.1) == chosen[7]  # same reference, same normalised text: same choice
    assert chosen == [in_sample(e, 0.1) for e in events]
    assert not in_sample(b"not an event", 0.5) and in_sample(b"anything", 1.0)


def _report(f1: dict[str, float], block_precision: float, review_rate: float, block_rate: float = 0.1,
            block_recall: float = 0.5, caught_recall: float = 0.9) -> dict:
    return {"per_technique": {k: {"f1": v} for k, v in f1.items()}, "block_precision": block_precision,
            "review_rate": review_rate, "block_rate": block_rate, "block_recall": block_recall,
            "caught_recall": caught_recall}


def test_gate_checks() -> None:
    gate = Gate(max_f1_drop=0.02, min_support=5, max_precision_drop=0.02, review_budget=0.1)
    current = _report({"A": 0.60, "B": 0.50}, 0.80, 0.50)
    ok = gate_checks(gate, current, _report({"A": 0.59, "B": 0.10}, 0.79, 0.08), {"A": 9, "B": 2})
    assert all(c.passed for c in ok)  # B's drop does not count: 2 positives are too few to judge
    bad = gate_checks(gate, current, _report({"A": 0.55, "B": 0.5}, 0.70, 0.20), {"A": 9, "B": 2})
    assert [c.name for c in bad if not c.passed] == ["technique F1", "block precision", "review rate"]


def test_the_gate_fails_a_candidate_that_lets_through_what_moderators_blocked() -> None:
    gate = Gate(max_f1_drop=0.02, min_support=5, max_precision_drop=0.02, max_recall_drop=0.05)
    current = _report({"A": 0.6}, 0.8, 0.1, block_rate=0.1, block_recall=0.5, caught_recall=0.9)
    # Fewer moderator-blocked memes caught (reviewed or blocked): fails though precision and F1 hold.
    fewer = gate_checks(gate, current, _report({"A": 0.6}, 0.8, 0.05, caught_recall=0.7), {"A": 9})
    assert [c.name for c in fewer if not c.passed] == ["blocked memes caught"]
    # Blocking nothing is vacuously precise (precision 1.0): never a pass when the serving bundle blocks.
    nothing = gate_checks(gate, current, _report({"A": 0.6}, 1.0, 0.1, block_rate=0.0, block_recall=0.0,
                                                 caught_recall=0.9), {"A": 9})
    assert {c.name for c in nothing if not c.passed} == {"block precision", "block recall"}


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


def _dev(tmp_path: Path, n: int = 40) -> Path:
    data = tmp_path / "dev.json"
    data.write_text(json.dumps(json.loads((SEMEVAL / "dev.json").read_text())[:n]))
    return data


def test_calibrate_fits_the_policy_and_leaves_technique_thresholds_unchanged(tiny_bundle: Path,
                                                                             tmp_path: Path) -> None:
    data, out = _dev(tmp_path), tmp_path / "calibrated"
    start = DecisionPolicy(id="start", harm_review=0.0, review_min_flags=0, harm_block=1.0)  # reviews all
    new, report = calibrate(tiny_bundle, data, out, 0.3, None, start, images=SEMEVAL / "images", base_rate=0.1,
                            progress=False)
    base = ModelBundle.load(tiny_bundle)
    m, c = new.manifest, new.manifest.calibration
    # Same graph, same technique thresholds (in both places the manifest declares them); a new version and policy.
    assert (new.root / "model.onnx").read_bytes() == (base.root / "model.onnx").read_bytes()
    assert m.thresholds == base.manifest.thresholds == m.output("techniques").thresholds
    assert m.version == bump_version(base.manifest.version) and new.fingerprint != base.fingerprint
    assert m.policy is not None and m.policy.id not in (start.id, DecisionPolicy().id)
    assert m.policy.review_min_flags == 0 and m.policy.harm_review != start.harm_review
    assert m.policy.fit.base_rate == 0.1 and m.policy.fit.target == {"review_rate": 0.3} and m.policy.fit.target_met
    assert c.target_met and c.decisions_from == "gold_labels" and c.n_records == 40 and c.base_policy == "start"
    assert c.n_held_back == report["split"]["n_held_back"] == 12 and c.base_rate_from == "flag"
    # Figures on the fitting part and the held-back part, before and after, and technique F1 unchanged.
    for key in ("flagged_rate_at_base", "held_back_flagged_rate_at_base", "held_back_harmful_caught",
                "held_back_block_precision", "review_rate", "technique_micro_f1"):
        assert key in c.before and key in c.after, key
    assert c.after["flagged_rate_at_base"] <= 0.3 < c.before["flagged_rate_at_base"]
    assert c.before["technique_micro_f1"] == c.after["technique_micro_f1"]
    assert report["techniques"]["micro_f1_before"] == pytest.approx(c.before["technique_micro_f1"], abs=1e-6)
    assert report["after"]["held_back"]["n"] == 12 and report["after"]["fit"]["n"] == 28
    # What the serving runtime computes from the written bundle reproduces the figures: p*caught + (1-p)*false.
    rt = BundleRuntime(new, providers="cpu")
    scored = score_data(rt, data, SEMEVAL / "images", m.policy, progress=False)
    fit_idx, _ = split(scored, 0.3, 0)
    part = scored.subset(fit_idx)
    flag = decide_all(part.probs, part.harmful, rt.thresholds, part.labels, m.policy, part.severity) != ALLOW
    by_hand = 0.1 * flag[part.truth].mean() + 0.9 * flag[~part.truth].mean()
    assert c.after["flagged_rate_at_base"] == pytest.approx(by_hand, abs=1e-6)
    # The new bundle, scored afresh, flags the same techniques: micro-F1 as the base bundle's.
    assert technique_report(scored, rt.thresholds)["micro_f1"] == report["techniques"]["micro_f1_before"]
    assert json.loads((new.root / "calibration.json").read_text())["policy_after"]["id"] == m.policy.id


def test_calibrate_exit_status_is_the_target(tiny_bundle: Path, tmp_path: Path) -> None:
    data = _dev(tmp_path, 30)
    harm_only = tmp_path / "harm_only.yaml"
    harm_only.write_text("review_min_flags: 0\nharm_block: 1.0\n")
    args = ["calibrate", "--bundle", str(tiny_bundle), "--data", str(data), "--images", str(SEMEVAL / "images"),
            "--base-rate", "0.05", "--no-progress"]
    assert memeguard([*args, "--target-review-rate", "0.2", "--policy", str(harm_only),
                      "--out", str(tmp_path / "met")]) == 0
    # The built-in rules review any flagged technique: the harm cut-offs cannot bring that within 1%.
    assert memeguard([*args, "--target-review-rate", "0.01", "--out", str(tmp_path / "unmet")]) == 1
    unmet = ModelBundle.load(tmp_path / "unmet").manifest
    assert not unmet.calibration.target_met and not unmet.policy.fit.target_met
    assert unmet.thresholds == ModelBundle.load(tiny_bundle).manifest.thresholds


def test_calibrate_starts_from_the_bundles_own_policy_and_fits_block_cutoffs(tmp_path: Path) -> None:
    from exporters.testing import write_tiny_bundle

    bundle = write_tiny_bundle(tmp_path / "harm", seed=1, severity_head=True)  # harm + severity heads, a policy
    base = ModelBundle.load(bundle)
    # The tiny bundle's policy has no severe techniques; SemEval records are harmful when their gold labels hold
    # one, so the start is its policy with the built-in severe techniques (same id: it is still that policy's fit).
    start = base.manifest.policy.model_copy(update={"severe_techniques": DecisionPolicy().severe_techniques})
    new, report = calibrate(bundle, _dev(tmp_path, 60), tmp_path / "cal", 0.5, 0.5, policy=start,
                            images=SEMEVAL / "images", base_rate=0.3, min_blocked=1, progress=False)
    m = new.manifest
    assert report["policy_before"]["id"] == base.manifest.policy.id == m.calibration.base_policy
    assert m.policy.fit.target == {"review_rate": 0.5, "block_precision": 0.5}
    assert (m.policy.severe_techniques, m.policy.review_min_flags) == (start.severe_techniques, 0)
    assert m.thresholds == base.manifest.thresholds and report["techniques"]["thresholds_unchanged"]
    # The random tiny model has no harm signal on these memes: no block cut-off is precise enough, so nothing is
    # blocked on the harm scores and the target is reported missed, with the reasons.
    assert not m.calibration.target_met and not m.policy.fit.target_met
    assert (m.policy.harm_block, m.policy.severity_block) == (1.0, 1.0) and report["notes"]
    rt = BundleRuntime(new, providers="cpu")
    assert rt.manifest.policy == m.policy  # what the worker will serve (serving_policy picks the bundle's)


def test_harmeme_file_is_scored_from_text_with_harmful_from_its_severity(tiny_bundle: Path, tmp_path: Path) -> None:
    lines = [{"id": "a", "image": "a.png", "labels": ["not harmful"], "text": "vote on tuesday"},
             {"id": "b", "image": "b.png", "labels": ["somewhat harmful", "individual"], "text": "they lie"},
             {"id": "c", "image": "c.png", "labels": [""], "text": "skipped"},
             {"id": "d", "image": "d.png", "labels": ["very harmful", "society"], "text": "never again"}]
    data = tmp_path / "harm.jsonl"
    data.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    s = score_data(BundleRuntime(ModelBundle.load(tiny_bundle), providers="cpu"), data, None, HARM_ONLY,
                   progress=False)
    assert s.ids == ["a", "b", "d"] and s.truth.tolist() == [False, True, True]  # no severity: left out
    assert s.decisions_from == "harm_labels" and not s.technique_labels and s.harmful is not None


def test_a_bundle_without_calibration_keeps_its_fingerprint(tiny_bundle: Path) -> None:
    import hashlib

    bundle = ModelBundle.load(tiny_bundle)
    # The digest as it was computed before `calibration` existed: the manifest JSON without that key.
    doc = json.loads(bundle.manifest.model_dump_json())
    assert doc.pop("calibration") is None
    before = hashlib.sha256(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()
    assert bundle.fingerprint == before
