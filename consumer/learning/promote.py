"""`memeguard promote`: a gate on the labelled set, then the rollout through the control topic (hot reload).

The gate (docs/learning.md, "Promotion gate"), candidate against the bundle serving now, same labelled data:
1. The candidate loads and passes its own golden set on this machine (the check every worker repeats).
2. Same technique labels, in the same order, as the serving bundle.
3. No technique with at least `min_support` positives in the data loses more than `max_f1_drop` F1.
4. Block precision does not fall by more than `max_precision_drop`; a candidate that blocks nothing while the
   serving bundle blocks and moderators blocked something fails it (blocking nothing is not "precise").
5. It lets through no more of what moderators blocked: block recall, and the share of blocked memes it catches
   (block or review), each fall by at most `max_recall_drop`.
6. The review rate is within `review_budget`: the deployment's (a flag, else the serving bundle's calibrated
   target), never the candidate's own manifest, which would let a candidate set its own bar.
Only when every check passes is the candidate published as a new numbered fleet revision on the control topic
(`memeguard rollout`'s mechanism), so a worker that restarts later serves it too; each worker validates the
bundle again in the background and swaps it in between batches (consumer/worker/hot_reload.py).
"""

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from consumer.core.bundle import ModelBundle
from consumer.core.policy import DecisionPolicy, serving_policy
from consumer.core.runtime import BundleRuntime
from consumer.errors import BundleError
from consumer.learning.calibrate import Scored, full_report, score_data
from consumer.settings import KafkaSettings
from consumer.worker import rollout
from consumer.worker.control import ControlCommand
from consumer.worker.hot_reload import validate_runtime


@dataclass(frozen=True)
class Gate:
    max_f1_drop: float = 0.02
    min_support: int = 5
    max_precision_drop: float = 0.02
    review_budget: float | None = None
    max_recall_drop: float = 0.05


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def gate_checks(gate: Gate, current: dict[str, Any], candidate: dict[str, Any], support: dict[str, int]
                ) -> list[Check]:
    """Pure: the checks on two reports (`calibrate.full_report`) of the same data."""
    checks = []
    drops = {name: current["per_technique"][name]["f1"] - candidate["per_technique"][name]["f1"]
             for name, n in support.items() if n >= gate.min_support}
    worst = max(drops.items(), key=lambda kv: kv[1], default=None)
    checks.append(Check(
        "technique F1", worst is None or worst[1] <= gate.max_f1_drop + 1e-12,
        "no technique has enough support to compare" if worst is None else
        f"largest drop {worst[1]:+.3f} ({worst[0]}) over {len(drops)} techniques with >= {gate.min_support} "
        f"positives; allowed {gate.max_f1_drop}"))
    drop = current["block_precision"] - candidate["block_precision"]
    blocks_nothing = candidate["block_rate"] == 0 and current["block_rate"] > 0 and current["block_recall"] > 0
    checks.append(Check("block precision", drop <= gate.max_precision_drop + 1e-12 and not blocks_nothing,
                        f"{current['block_precision']:.3f} -> {candidate['block_precision']:.3f}; "
                        f"allowed drop {gate.max_precision_drop}"
                        + ("; the candidate blocks nothing the serving bundle blocks" if blocks_nothing else "")))
    for key, name, what in (("block_recall", "block recall", "blocked"),
                            ("caught_recall", "blocked memes caught", "blocked or reviewed")):
        fall = current[key] - candidate[key]
        checks.append(Check(name, fall <= gate.max_recall_drop + 1e-12,
                            f"share of moderator-blocked memes {what}: "
                            f"{current[key]:.3f} -> {candidate[key]:.3f}; allowed drop {gate.max_recall_drop}"))
    if gate.review_budget is not None:
        checks.append(Check("review rate", candidate["review_rate"] <= gate.review_budget + 1e-12,
                            f"{current['review_rate']:.3f} -> {candidate['review_rate']:.3f}; "
                            f"budget {gate.review_budget}"))
    return checks


def evaluate_gate(current_path: Path, candidate_path: Path, data: Path, images: Path | None, gate: Gate,
                  policy: DecisionPolicy | None, progress: bool = True) -> tuple[list[Check], dict[str, Any]]:
    """`policy`: the deployment's override (MEMEGUARD_POLICY_FILE), or None: each bundle decides with its own
    policy (a calibrated candidate differs from the serving bundle in its policy, not its thresholds)."""
    checks: list[Check] = []
    try:
        candidate_rt = BundleRuntime(ModelBundle.load(candidate_path), providers="cpu")
        checked = validate_runtime(candidate_rt)
        checks.append(Check("golden set", True, f"{checked} golden memes reproduce the recorded outputs"))
    except BundleError as e:
        return [Check("golden set", False, str(e))], {}
    current_rt = BundleRuntime(ModelBundle.load(current_path), providers="cpu")
    same = list(current_rt.manifest.labels) == list(candidate_rt.manifest.labels)
    checks.append(Check("labels", same, "same techniques in the same order" if same else
                        "the candidate's technique labels differ from the serving bundle's"))
    if not same:
        return checks, {}
    serving_fit = current_rt.manifest.policy.fit if current_rt.manifest.policy is not None else None
    if gate.review_budget is None and serving_fit is not None and "review_rate" in serving_fit.target:
        gate = replace(gate, review_budget=serving_fit.target["review_rate"])
    current_policy = serving_policy(current_rt.manifest, policy)
    candidate_policy = serving_policy(candidate_rt.manifest, policy)
    cur: Scored = score_data(current_rt, data, images, current_policy, progress=progress)
    cand: Scored = score_data(candidate_rt, data, images, current_policy, progress=progress)
    current_report = full_report(cur, current_rt.thresholds, current_policy)
    candidate_report = full_report(cand, candidate_rt.thresholds, candidate_policy)
    support = dict(zip(cur.labels, (int(x) for x in np.asarray(cur.gold).sum(axis=0)), strict=True))
    checks.extend(gate_checks(gate, current_report, candidate_report, support))
    return checks, {"current": current_report, "candidate": candidate_report,
                    "current_model": current_rt.version, "candidate_model": candidate_rt.version,
                    "gate": gate.__dict__}


def roll_out(settings: KafkaSettings, candidate: Path, link: Path | None = None) -> ControlCommand:
    """Point the fleet at the candidate: re-point `link` atomically if given, then a new numbered revision on the
    control topic (the same record `memeguard rollout` publishes; a restarting worker replays it).

    With a link, workers that watch it would also notice on their next poll; the revision makes it immediate,
    durable across restarts, and reaches workers watching another path.
    """
    target = Path(candidate).resolve()
    if link is not None:
        tmp = link.with_name(f".{link.name}.promote")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, link)
        target = link
    return rollout.roll_out(settings, str(target))
