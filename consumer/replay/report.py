"""The evaluation report of one replay: what the verdicts of a labelled topic say about the model.

F1 figures reuse `consumer.evaluate.run.multilabel_report` (scikit-learn's zero_division=1 semantics), so
`memeguard replay` and `memeguard evaluate` cannot disagree on the metric.
"""

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from consumer.evaluate.run import TrainingPool, multi_hot, multilabel_report, training_pool_report
from schemas import DeadLetter, Verdict
from scoring.metrics import binary_auroc


@dataclass
class EventInfo:
    """What replay keeps of each input event besides its verdict (never the image bytes)."""

    event_id: str
    post_id: str
    text: str | None
    image_ref: str  # the event's image_url, or "inline" for base64 images
    labels: list[str] | None
    harmful: bool | None  # gold binary label: metadata "harmful" when given, else "has any technique"


@dataclass
class ReplayResult:
    """Verdicts and dead letters of one bundle, with the events they came from."""

    model: str = ""
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    wall_s: float = 0.0
    training_pool: TrainingPool | None = None  # what the bundle was fitted on (`load_training_pool`)
    expected: dict[str, float] = field(default_factory=dict)  # the bundle manifest's `expected` (nested CV)
    topic: str = ""  # the replayed topic


def auroc(gold: np.ndarray, scores: np.ndarray) -> float | None:
    """None when only one class is present (the curve is undefined there)."""
    return binary_auroc(gold.astype(bool), scores)


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    arr = np.asarray(values, dtype=float)
    return {k: round(float(np.percentile(arr, q)), 3) for k, q in (("p50", 50), ("p95", 95), ("p99", 99))} | {
        "max": round(float(arr.max()), 3)}


def build_report(result: ReplayResult, events: dict[str, EventInfo], labels: list[str]) -> dict[str, Any]:
    verdicts = list(result.verdicts.values())
    decisions = Counter(v.decision.value for v in verdicts)
    report: dict[str, Any] = {
        "model": result.model,
        "n_events": len(events),
        "n_verdicts": len(verdicts),
        "n_dead_letters": len(result.dead_letters),
        "dead_letters_by_kind": dict(Counter(d.error_kind.value for d in result.dead_letters)),
        "decisions": {d: decisions.get(d, 0) for d in ("allow", "review", "block")},
        "cache_hit_rate": round(sum(v.cached for v in verdicts) / len(verdicts), 4) if verdicts else None,
        # Every event of a batch waits for the whole batch, so its latency is the batch's pipeline time.
        "latency_ms": percentiles([v.timings_ms["total"] for v in verdicts if "total" in v.timings_ms]),
        "wall_s": round(result.wall_s, 3),
        "events_per_s": round(len(events) / result.wall_s, 2) if result.wall_s > 0 else None,
        "metric": "sklearn f1_score(average=micro|macro, zero_division=1) on multi-hot vectors",
    }
    labelled = [v for v in verdicts if events.get(v.event_id) and events[v.event_id].labels is not None]
    report["n_labelled"] = len(labelled)
    if not labelled:
        return report
    gold_lists = [events[v.event_id].labels or [] for v in labelled]
    gold = multi_hot(gold_lists, labels)
    pred = np.array([[t.flagged for t in v.techniques] for v in labelled], dtype=bool)
    scores = np.array([[t.score for t in v.techniques] for v in labelled], dtype=float)
    report.update(multilabel_report(gold, pred, labels))
    # Verdicts carry the same content hash the training pool records: a figure on seen memes measures fit.
    report.update(training_pool_report(result.training_pool, [v.content_hash for v in labelled]))
    for k, name in enumerate(labels):
        report["per_technique"][name]["auroc"] = auroc(gold[:, k], scores[:, k])
        report["per_technique"][name]["predicted"] = int(pred[:, k].sum())
    report["unknown_labels"] = sorted({n for names in gold_lists for n in names} - set(labels))
    harmful = [(events[v.event_id].harmful, v.harmful_score) for v in labelled
               if v.harmful_score is not None and events[v.event_id].harmful is not None]
    report["harmful_auroc"] = (auroc(np.array([g for g, _ in harmful]), np.array([s for _, s in harmful]))
                               if harmful else None)
    report["harmful_gold"] = "metadata.harmful when present, else: the meme has at least one technique label"
    report["micro_f1_context"] = figure_context(report, result.expected, result.topic)
    return report


# What the manifest's `expected` figures are (models/expected.py copies them from research/technique_nested_cv.md).
EXPECTED_PROTOCOL = ("nested cross-validation on SemEval train+dev: mean ± sd of the outer folds "
                     "(the bundle manifest's expected figures, docs/models.md)")


def figure_context(report: dict[str, Any], expected: dict[str, float], topic: str) -> dict[str, Any]:
    """The replay micro-F1 labelled with what it measures, beside the bundle's cross-validated estimate.

    A figure on memes the model was fitted on measures fit, not what it will score on new memes: it is labelled
    in-sample whenever any replayed meme is in the bundle's recorded training pool, and "may be in-sample" when
    the bundle does not record its pool."""
    seen, scored = report.get("n_in_training_pool"), report.get("n_scored")
    if seen is None or scored is None:
        sample = "unknown"
        label = (f"replayed topic {topic or '(unnamed)'}: may be in-sample (the bundle does not record the memes "
                 "it was trained on)")
    elif seen:
        splits = ", ".join(report.get("training_pool_splits") or []) or "its training pool"
        sample = "in-sample" if seen == scored else "partly in-sample"
        label = f"{sample}: {seen} of {scored} replayed memes are in the bundle's training data ({splits})"
    else:
        sample = "held-out"
        label = f"held-out: none of the {scored} replayed memes is in the bundle's training data"
    out: dict[str, Any] = {"sample": sample, "label": label}
    if "expected_micro_f1" in expected:
        out["expected_micro_f1"] = expected["expected_micro_f1"]
        out["expected_micro_f1_sd"] = expected.get("expected_micro_f1_sd")
        if "expected_micro_f1_low" in expected and "expected_micro_f1_high" in expected:
            out["expected_micro_f1_interval_95"] = [expected["expected_micro_f1_low"],
                                                    expected["expected_micro_f1_high"]]
        out["expected_protocol"] = EXPECTED_PROTOCOL
    return out


def disagreements(a: ReplayResult, b: ReplayResult, limit: int = 200) -> list[dict[str, Any]]:
    """Events where the two bundles decided differently or flagged different techniques."""
    out = []
    for event_id, va in a.verdicts.items():
        vb = b.verdicts.get(event_id)
        if vb is None:
            continue
        fa, fb = {t.technique for t in va.flagged}, {t.technique for t in vb.flagged}
        if va.decision != vb.decision or fa != fb:
            out.append({"event_id": event_id, "decision_a": va.decision.value, "decision_b": vb.decision.value,
                        "only_a": sorted(fa - fb), "only_b": sorted(fb - fa),
                        "harmful_a": va.harmful_score, "harmful_b": vb.harmful_score})
    out.sort(key=lambda d: (d["decision_a"] == d["decision_b"], d["event_id"]))  # decision changes first
    return out[:limit]


def compare_reports(a: dict[str, Any], b: dict[str, Any], disagreeing: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"model_a": a["model"], "model_b": b["model"], "n_disagreements": len(disagreeing)}
    for key in ("micro_f1", "macro_f1", "harmful_auroc"):
        if a.get(key) is not None and b.get(key) is not None:
            out[f"{key}_delta"] = round(b[key] - a[key], 6)
    if "per_technique" in a and "per_technique" in b:
        out["per_technique_f1_delta"] = {
            name: round(b["per_technique"][name]["f1"] - fig["f1"], 6) for name, fig in a["per_technique"].items()}
    out["disagreements"] = disagreeing
    return out
