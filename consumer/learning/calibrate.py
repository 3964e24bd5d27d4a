"""`memeguard calibrate`: fit a bundle's thresholds to a labelled sample of the deployment's own traffic.

What is fitted (docs/learning.md, "Calibration"):
1. Per technique, the threshold with the best F1 against the data's technique labels, for techniques with at
   least `min_support` positives; the others keep the bundle's threshold (too few examples to move it).
2. Two decision cut-offs, searched jointly on a grid: a *review floor* (no non-severe technique may flag below
   it) and a *severe floor* (no severe technique may flag below it; above the policy's `block_min_score` it is the
   block cut-off). Both are folded into the per-technique
   thresholds, because thresholds are what a bundle carries through hot reload: the worker's policy file is not
   touched and the decisions are exactly those `DecisionPolicy.decide` makes with the new thresholds.

Targets: `--target-review-rate R` keeps the share of `review` decisions <= R (and, with `--target-precision`,
block precision >= P) while catching as many moderator-blocked memes as possible (block or review);
`--target-precision P` alone keeps block precision >= P while blocking as many of them as possible.

Decisions to compare against: the dataset's `decision` (moderators' block / allow); a plain SemEval file has none,
and then a meme counts as "block" when its gold labels include a technique the policy treats as severe (a
stand-in, reported as `decisions_from: gold_labels`).
"""

import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from consumer.core.bundle import MANIFEST, ModelBundle, digest_files
from consumer.core.images import decode_image
from consumer.core.policy import DecisionPolicy
from consumer.core.runtime import BundleRuntime
from consumer.errors import ConfigError, InputError
from consumer.evaluate.run import load_records, multi_hot, multilabel_report
from consumer.learning.dataset import DATASET_FILE, IMAGES_DIR
from schemas.manifest import Calibration

log = logging.getLogger(__name__)

ALLOW, REVIEW, BLOCK = 0, 1, 2
CALIBRATION_FILE = "calibration.json"
GRID_POINTS = 256


# --- the labelled data, scored ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scored:
    """The labelled data run through a bundle: scores plus what the moderators (or gold labels) said."""

    ids: list[str]
    labels: list[str]  # technique names, the bundle's column order
    probs: np.ndarray  # [N, K]
    harmful: np.ndarray | None  # [N]
    gold: np.ndarray  # bool [N, K] technique labels
    moderator_block: np.ndarray  # bool [N]
    decisions_from: str  # "moderators" | "gold_labels"
    source: str


def resolve_data(data: Path, images: Path | None) -> tuple[Path, Path]:
    """A dataset folder (dataset.json + images/) or any SemEval-format file (images/ beside it by default)."""
    file = data / DATASET_FILE if data.is_dir() else data
    folder = images or (file.parent / IMAGES_DIR)
    if not file.is_file():
        raise ConfigError(f"--data {data}: no {DATASET_FILE} there. Build one with `memeguard dataset build`.")
    if not folder.is_dir():
        raise ConfigError(f"images folder {folder} is missing; pass --images.")
    return file, folder


def moderator_blocks(records: list[dict[str, Any]], policy: DecisionPolicy) -> tuple[np.ndarray, str]:
    if all(r.get("decision") in ("block", "allow") for r in records):
        return np.array([r["decision"] == "block" for r in records], dtype=bool), "moderators"
    severe = set(policy.severe_techniques)
    return np.array([bool(severe & set(r.get("labels") or [])) for r in records], dtype=bool), "gold_labels"


def score_data(runtime: BundleRuntime, data: Path, images: Path | None, policy: DecisionPolicy,
               batch_size: int = 16, progress: bool = True, max_pixels: int = 40_000_000) -> Scored:
    file, folder = resolve_data(data, images)
    records = load_records(file)
    target = runtime.manifest.image.size if runtime.manifest.image is not None else None
    kept, probs, harmful = [], [], []
    bar = tqdm(total=len(records), desc=f"score {runtime.manifest.name}@{runtime.manifest.version}", unit="meme",
               disable=not progress, file=sys.stderr)
    for start in range(0, len(records), batch_size):
        batch, imgs = [], []
        for r in records[start:start + batch_size]:
            try:
                # Decoded as the worker decodes (downscaled on decode to the model's input side), so the scores
                # fitted here are the scores the worker will compute for the same bytes.
                imgs.append(decode_image((folder / str(r["image"])).read_bytes(), max_pixels, target=target))
                batch.append(r)
            except (OSError, InputError) as e:
                log.warning("record %s: image %s missing or undecodable (%s); left out", r["id"], r["image"], e)
        if batch:
            pred = runtime.predict(imgs, [str(r.get("text") or "") for r in batch])
            probs.append(np.clip(pred.technique_probs, 0.0, 1.0))
            if pred.harmful_probs is not None:
                harmful.append(pred.harmful_probs)
            kept.extend(batch)
        bar.update(len(records[start:start + batch_size]))
    bar.close()
    if not kept:
        raise ConfigError(f"none of the {len(records)} records of {file} has a readable image")
    labels = list(runtime.manifest.labels)
    blocks, origin = moderator_blocks(kept, policy)
    return Scored(
        ids=[str(r["id"]) for r in kept], labels=labels, probs=np.concatenate(probs),
        harmful=np.concatenate(harmful) if harmful else None,
        gold=multi_hot([r.get("labels") or [] for r in kept], labels), moderator_block=blocks,
        decisions_from=origin, source=f"{file} ({len(kept)} records)",
    )


# --- the policy, vectorised -----------------------------------------------------------------------------------
def decide_all(probs: np.ndarray, harmful: np.ndarray | None, thresholds: np.ndarray, labels: list[str],
               policy: DecisionPolicy) -> np.ndarray:
    """int [N]: ALLOW / REVIEW / BLOCK, exactly as `policy.decide` on each row (a test holds them equal)."""
    flagged = probs >= thresholds
    severe = np.array([name in policy.severe_techniques for name in labels], dtype=bool)
    block = (flagged & severe & (probs >= policy.block_min_score)).any(axis=1)
    review = flagged.sum(axis=1) >= policy.review_min_flags
    if harmful is not None:
        block |= harmful >= policy.harmful_block
        review |= harmful >= policy.harmful_review
    return np.where(block, BLOCK, np.where(review, REVIEW, ALLOW))


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 1.0  # nothing predicted: precision 1 (as zero_division=1)


def decision_report(decisions: np.ndarray, moderator_block: np.ndarray) -> dict[str, float]:
    """Rates of each decision, and precision / recall of `block` and `review` against the moderators' blocks.

    review precision: share of reviewed memes the moderators blocked (review worth a moderator's time);
    review recall: share of moderator-blocked memes sent to review; caught recall: blocked or reviewed.
    """
    n = len(decisions)
    block, review, bad = decisions == BLOCK, decisions == REVIEW, moderator_block
    return {
        "n": float(n),
        "review_rate": _ratio(review.sum(), n), "block_rate": _ratio(block.sum(), n),
        "allow_rate": _ratio((decisions == ALLOW).sum(), n),
        "block_precision": _ratio((block & bad).sum(), block.sum()),
        "block_recall": _ratio((block & bad).sum(), bad.sum()),
        "review_precision": _ratio((review & bad).sum(), review.sum()),
        "review_recall": _ratio((review & bad).sum(), bad.sum()),
        "caught_recall": _ratio(((block | review) & bad).sum(), bad.sum()),
    }


def full_report(s: Scored, thresholds: np.ndarray, policy: DecisionPolicy) -> dict[str, Any]:
    report: dict[str, Any] = decision_report(decide_all(s.probs, s.harmful, thresholds, s.labels, policy),
                                             s.moderator_block)
    techniques = multilabel_report(s.gold, s.probs >= thresholds, s.labels)
    report.update(micro_f1=techniques["micro_f1"], macro_f1=techniques["macro_f1"],
                  per_technique=techniques["per_technique"])
    return report


# --- the objective --------------------------------------------------------------------------------------------
def best_f1_threshold(scores: np.ndarray, positives: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of `scores >= threshold`; among equal F1s the fewest flags. Every cut
    between two distinct scores is tried (exact on the sample); the threshold is placed midway in the gap, not on
    a meme's score, so last-bit differences between runtimes cannot flip the memes next to it."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], positives[order].astype(float)
    tp = np.cumsum(y)
    fp = np.cumsum(1.0 - y)
    fn = y.sum() - tp
    f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1e-12), 1.0)
    # Cut only between distinct scores: position i means "flag everything scoring >= s[i]".
    last_of_value = np.r_[s[1:] != s[:-1], True]
    f1 = np.where(last_of_value, f1, -1.0)
    best = float(f1.max())
    i = int(np.flatnonzero(f1 == best)[0])  # the first (highest score) position reaching the best F1
    below = s[i + 1:][s[i + 1:] < s[i]]
    return float((s[i] + (below[0] if len(below) else 0.0)) / 2), best


def fit_technique_thresholds(probs: np.ndarray, gold: np.ndarray, base: np.ndarray,
                             min_support: int) -> np.ndarray:
    out = base.astype(float).copy()
    for k in range(probs.shape[1]):
        if gold[:, k].sum() >= min_support:
            out[k], _ = best_f1_threshold(probs[:, k], gold[:, k])
    return out


def floor_candidates(values: np.ndarray, points: int = GRID_POINTS) -> np.ndarray:
    """0 (no floor), the midpoints between consecutive distinct scores (between quantiles for large samples)
    and 1.0 (nothing flags): every cut that changes what is flagged, each placed in a gap, not on a score."""
    unique = np.unique(values)
    if len(unique) > points:
        unique = np.unique(np.quantile(values, np.linspace(0, 1, points), method="higher"))
    return np.unique(np.r_[0.0, (unique[1:] + unique[:-1]) / 2, 1.0])


def apply_floors(thresholds: np.ndarray, severe: np.ndarray, review_floor: float, severe_floor: float) -> np.ndarray:
    """Non-severe techniques get the review floor, severe ones the severe floor: a review budget is then never
    met by suppressing the flags that block."""
    return np.maximum(np.where(severe, severe_floor, review_floor), thresholds)


@dataclass(frozen=True)
class Fit:
    thresholds: np.ndarray
    review_floor: float
    severe_floor: float
    target_met: bool
    report: dict[str, float]


def fit_floors(probs: np.ndarray, harmful: np.ndarray | None, moderator_block: np.ndarray, thresholds: np.ndarray,
               labels: list[str], policy: DecisionPolicy, target_review_rate: float | None,
               target_precision: float | None, points: int = GRID_POINTS) -> Fit:
    """Search (review floor, severe floor) for the target; see the module docstring for the objective."""
    if target_review_rate is None and target_precision is None:
        raise ConfigError("give --target-review-rate, --target-precision or both")
    severe = np.array([name in policy.severe_techniques for name in labels], dtype=bool)
    # A floor changes a meme's decision only where it crosses the meme's highest flagged score (of a non-severe
    # technique for the review floor, of a severe one for the severe floor): those are the cuts to try.
    flagged = np.where(probs >= thresholds, probs, 0.0)
    review_grid = (floor_candidates(flagged[:, ~severe].max(axis=1, initial=0.0), points) if (~severe).any()
                   else np.array([0.0]))
    severe_grid = (floor_candidates(flagged[:, severe].max(axis=1, initial=0.0), points) if severe.any()
                   else np.array([0.0]))
    best: tuple[tuple, Fit] | None = None
    for rf in review_grid:
        for sf in severe_grid:
            th = apply_floors(thresholds, severe, float(rf), float(sf))
            rep = decision_report(decide_all(probs, harmful, th, labels, policy), moderator_block)
            rate_ok = target_review_rate is None or rep["review_rate"] <= target_review_rate + 1e-12
            precision_ok = target_precision is None or rep["block_precision"] >= target_precision - 1e-12
            if target_review_rate is None and rep["block_rate"] == 0 and moderator_block.any():
                precision_ok = False  # blocking nothing is vacuously precise: not a way to meet a precision target
            met = rate_ok and precision_ok
            if target_review_rate is not None:
                # Within budget: catch the most; then the most precise blocks; then the fewest reviews.
                goal = (rep["caught_recall"], rep["block_precision"], -rep["review_rate"])
                miss = (-max(rep["review_rate"] - target_review_rate, 0.0),
                        -max((target_precision or 0.0) - rep["block_precision"], 0.0))
            else:
                goal = (rep["block_recall"], rep["caught_recall"], -rep["review_rate"])
                miss = (-max(target_precision - rep["block_precision"], 0.0), 0.0)
            # Feasible points first; otherwise the one closest to the target. Lower floors break ties
            # (the smallest change from the fitted thresholds).
            key = (met, goal if met else miss, goal, -float(rf), -float(sf))
            if best is None or key > best[0]:
                best = (key, Fit(th, float(rf), float(sf), met, rep))
    assert best is not None
    return best[1]


# --- the new bundle ------------------------------------------------------------------------------------------
def bump_version(version: str) -> str:
    """0.1.0 -> 0.1.1; a version that does not end in a number gets `.1` appended."""
    head, _, last = version.rpartition(".")
    return f"{head}.{int(last) + 1}" if last.isdigit() and head else f"{version}.1"


def write_calibrated_bundle(base: ModelBundle, out_dir: Path, thresholds: np.ndarray, calibration: Calibration,
                            report: dict[str, Any], version: str | None = None) -> ModelBundle:
    """Same ONNX graph and files, new thresholds + version + calibration record; staged, then renamed in place."""
    out_dir = Path(out_dir)
    if out_dir.resolve() == base.root:
        raise ConfigError("--out must differ from --bundle: a serving bundle is never rewritten in place")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for f in base.manifest.files:  # only listed files: a TensorRT engine cache is per bundle, not copied
            if f.path == CALIBRATION_FILE:
                continue
            (staging / f.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(base.root / f.path, staging / f.path)
        (staging / CALIBRATION_FILE).write_text(json.dumps(report, indent=1, sort_keys=True))
        names = sorted({f.path for f in base.manifest.files} | {CALIBRATION_FILE})
        manifest = base.manifest.model_copy(update={
            "version": version or bump_version(base.manifest.version), "created_at": datetime.now(UTC),
            "thresholds": [float(t) for t in thresholds], "calibration": calibration,
            "files": digest_files(staging, names),
        })
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        ModelBundle.load(staging)  # the checks the worker applies
        staging.chmod(0o755)
        old = out_dir.with_name(f".{out_dir.name}.old")
        if out_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ModelBundle.load(out_dir)


SUMMARY_KEYS = ("review_rate", "block_rate", "allow_rate", "block_precision", "block_recall", "review_precision",
                "review_recall", "caught_recall", "micro_f1", "macro_f1")


def before_after_table(before: dict[str, Any], after: dict[str, Any]) -> str:
    lines = [f"{'':18}{'before':>9}{'after':>9}"]
    for k in SUMMARY_KEYS:
        lines.append(f"{k:18}{before[k]:9.3f}{after[k]:9.3f}")
    return "\n".join(lines)


def calibrate(bundle_path: Path, data: Path, out: Path, target_review_rate: float | None,
              target_precision: float | None, policy: DecisionPolicy, images: Path | None = None,
              min_support: int = 5, version: str | None = None, progress: bool = True
              ) -> tuple[ModelBundle, dict[str, Any]]:
    base = ModelBundle.load(bundle_path)
    runtime = BundleRuntime(base, providers="cpu")
    scored = score_data(runtime, data, images, policy, progress=progress)
    base_th = np.asarray(base.manifest.thresholds, dtype=float)
    fitted = fit_technique_thresholds(scored.probs, scored.gold, base_th, min_support)
    fit = fit_floors(scored.probs, scored.harmful, scored.moderator_block, fitted, scored.labels, policy,
                     target_review_rate, target_precision)
    before, after = full_report(scored, base_th, policy), full_report(scored, fit.thresholds, policy)
    target = {k: v for k, v in (("review_rate", target_review_rate), ("block_precision", target_precision))
              if v is not None}
    summary = lambda r: {k: round(float(r[k]), 6) for k in SUMMARY_KEYS}  # noqa: E731
    calibration = Calibration(
        base_bundle=runtime.version, base_thresholds=[float(t) for t in base_th], data=scored.source,
        n_records=len(scored.ids), decisions_from=scored.decisions_from, target=target, target_met=fit.target_met,
        review_floor=fit.review_floor, severe_floor=fit.severe_floor, before=summary(before), after=summary(after),
    )
    report = {"calibration": calibration.model_dump(mode="json"), "before": before, "after": after,
              "policy": policy.model_dump(mode="json"), "min_support": min_support,
              "fitted_techniques": [n for n, a, b in zip(scored.labels, base_th, fitted, strict=True) if a != b]}
    new = write_calibrated_bundle(base, out, fit.thresholds, calibration, report, version)
    return new, report
