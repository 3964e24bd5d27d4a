"""`memeguard compare`: production verdicts against shadow verdicts of the same events.

Joined on event id (the latest verdict of each side per event). Reports decision agreement and the confusion
of decisions, each side's decision rates and their change, and per technique: how often the flags agree, the
change in flag rate and the mean score change (candidate - production).

Every record is validated against the Verdict schema (`parse_verdict`); one that does not fit (not JSON,
a tombstone, deep nesting, a number out of range, a wrong type, an unreadable time) is skipped, counted in
the report's `invalid_records` and logged by position only, never its content.
"""

import logging
from collections import Counter
from datetime import UTC
from typing import Any

import numpy as np
from pydantic import ValidationError

from consumer.kafka.topic_reader import read_topic
from schemas import Decision, Verdict

log = logging.getLogger(__name__)

DECISIONS = [d.value for d in Decision]
MAX_VERDICT_BYTES = 16 * 1024 * 1024  # the consumers' fetch limit


def parse_verdict(value: bytes | None) -> Verdict | None:
    """The verdict in a record value, or None when it does not fit the schema. Never raises. A time without
    an offset is read as UTC (as the input event's), so verdicts' times always compare."""
    if value is None or len(value) > MAX_VERDICT_BYTES:
        return None
    try:
        # pydantic's JSON parser: bounded nesting, no lone surrogates, strict UTF-8
        v = Verdict.model_validate_json(value)
        if v.created_at.tzinfo is None or v.created_at.utcoffset() is None:
            v = v.model_copy(update={"created_at": v.created_at.replace(tzinfo=UTC)})
        v.created_at.timestamp()  # OverflowError at the ends of the calendar: such a time orders nothing
    except (ValidationError, ValueError, RecursionError, OverflowError):
        return None
    return v


def latest_by_event(records, counts: Counter[str] | None = None) -> dict[str, Verdict]:
    """The latest verdict per event id; `counts` gets `verdicts` and `invalid` (records skipped)."""
    out: dict[str, Verdict] = {}
    invalid = []
    for r in records:
        v = parse_verdict(r.value)
        if v is None:
            invalid.append(r)
            continue
        if counts is not None:
            counts["verdicts"] += 1
        if v.event_id not in out or v.created_at.timestamp() >= out[v.event_id].created_at.timestamp():
            out[v.event_id] = v
    if invalid:
        first = invalid[0]
        log.warning("%d records on %s do not fit the verdict schema; skipped (first at partition %d offset %d)",
                    len(invalid), first.topic, first.partition, first.offset)
        if counts is not None:
            counts["invalid"] += len(invalid)
    return out


def compare_verdicts(production: dict[str, Verdict], shadow: dict[str, Verdict]) -> dict[str, Any]:
    joined = sorted(set(production) & set(shadow))
    report: dict[str, Any] = {
        "production_verdicts": len(production), "shadow_verdicts": len(shadow), "joined": len(joined),
        "production_models": dict(Counter(f"{production[e].model.name}@{production[e].model.version}"
                                          for e in joined)),
        "shadow_models": dict(Counter(f"{shadow[e].model.name}@{shadow[e].model.version}" for e in joined)),
    }
    if not joined:
        return report
    prod_d = [production[e].decision.value for e in joined]
    shad_d = [shadow[e].decision.value for e in joined]
    n = len(joined)
    report["decision_agreement"] = sum(a == b for a, b in zip(prod_d, shad_d, strict=True)) / n
    report["confusion"] = {f"{a}->{b}": c for (a, b), c in sorted(Counter(zip(prod_d, shad_d, strict=True)).items())}
    report["decision_rates"] = {
        d: {"production": prod_d.count(d) / n, "shadow": shad_d.count(d) / n,
            "change": (shad_d.count(d) - prod_d.count(d)) / n} for d in DECISIONS}
    names = [t.technique for t in production[joined[0]].techniques]
    per: dict[str, dict[str, float]] = {}
    for name in names:
        p_score, s_score, p_flag, s_flag = [], [], [], []
        for e in joined:
            p = next((t for t in production[e].techniques if t.technique == name), None)
            s = next((t for t in shadow[e].techniques if t.technique == name), None)
            if p is None or s is None:
                continue
            p_score.append(p.score), s_score.append(s.score), p_flag.append(p.flagged), s_flag.append(s.flagged)
        if not p_score:
            continue
        pf, sf = np.array(p_flag), np.array(s_flag)
        per[name] = {
            "flag_agreement": float((pf == sf).mean()),
            "flag_rate_production": float(pf.mean()), "flag_rate_shadow": float(sf.mean()),
            "flag_rate_change": float(sf.mean() - pf.mean()),
            "mean_score_change": float(np.mean(np.array(s_score) - np.array(p_score))),
        }
    report["per_technique"] = per
    return report


def compare_topics(bootstrap: str, production_topic: str, shadow_topic: str) -> dict[str, Any]:
    prod_counts: Counter[str] = Counter()
    shadow_counts: Counter[str] = Counter()
    report = compare_verdicts(latest_by_event(read_topic(bootstrap, production_topic), prod_counts),
                              latest_by_event(read_topic(bootstrap, shadow_topic), shadow_counts))
    report["invalid_records"] = {"production": prod_counts["invalid"], "shadow": shadow_counts["invalid"]}
    return report


def format_comparison(r: dict[str, Any]) -> str:
    lines = [f"joined {r['joined']} events (production {r['production_verdicts']}, shadow {r['shadow_verdicts']})",
             f"models: production {r['production_models']}  shadow {r['shadow_models']}"]
    if not r["joined"]:
        return "\n".join(lines + ["nothing to compare: no event has both verdicts yet"])
    lines.append(f"decision agreement {r['decision_agreement']:.3f}")
    lines.append(f"{'decision':10}{'production':>12}{'shadow':>10}{'change':>10}")
    for d, v in r["decision_rates"].items():
        lines.append(f"{d:10}{v['production']:12.3f}{v['shadow']:10.3f}{v['change']:+10.3f}")
    lines.append(f"{'technique':36}{'flag agree':>11}{'flag rate Δ':>12}{'score Δ':>9}")
    for name, v in sorted(r["per_technique"].items(), key=lambda kv: kv[1]["flag_agreement"]):
        lines.append(f"{name[:36]:36}{v['flag_agreement']:11.3f}{v['flag_rate_change']:+12.3f}"
                     f"{v['mean_score_change']:+9.3f}")
    return "\n".join(lines)
