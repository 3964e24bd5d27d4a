"""`memeguard calibrate`: fit a bundle's decision POLICY to a review budget on labelled data.

The technique flags are not touched: their thresholds were chosen for label F1 and stay exactly as they are
(the new bundle is checked for it). What is fitted are the policy's harm cut-offs (schemas/policy.py,
docs/learning.md "Calibration"):
- `harm_review`, for `--target-review-rate R`: the lowest cut-off (the most harmful memes caught) whose expected
  share of review + block decisions on a feed with the base rate p stays within R;
- `harm_block` and `severity_block`, for `--target-precision P`: the pair that blocks the most harmful memes with
  a block precision of at least P at the base rate, blocking at least `min_blocked` memes of the data (blocking
  nothing is never a pass when the data has harmful memes; with no pair reaching P, nothing is blocked on the
  harm scores and the target is reported as missed).
The other policy fields (severe techniques and the technique rules) are kept from the policy it starts from.

Every rate is computed from the whole policy (`decide_all`, held equal to `DecisionPolicy.decide` by a test) and
is given on the data and at the base rate p: rate(p) = p * (share of harmful memes hit) + (1 - p) * (share of
harmless memes hit). The data is split (seeded, stratified, grouped by text) into a fitting part and a held-back
part; the cut-offs are fitted on the first, the figures are reported on both, and the exit status says whether
the target is met on the fitting part.

Labelled data, and what counts as harmful:
- a reviews dataset folder (`memeguard dataset build`): the moderators' `decision` (block = harmful);
- a SemEval-format JSON file with images: a severe technique (the policy's) in the gold labels (a stand-in,
  reported as `decisions_from: gold_labels`);
- a HarMeme annotation file (.jsonl, `{"id", "image", "labels": [severity, target...], "text"}`): somewhat or very
  harmful. HarMeme ships no images: each text is scored with the neutral grey image `memeguard evaluate` uses (the
  harm head reads text only; the technique head sees no picture); the file is read by consumer/evaluate/harmeme.py
  (consumer/ never imports models/).
"""

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from consumer.core.bundle import MANIFEST, ModelBundle, digest_files
from consumer.core.images import decode_image
from consumer.core.policy import DecisionPolicy, serving_policy
from consumer.core.runtime import BundleRuntime
from consumer.errors import ConfigError, InputError
from consumer.evaluate.harmeme import NEUTRAL_IMAGE_SIDE, is_harmeme_file, load_harmeme
from consumer.evaluate.run import load_records, multi_hot, multilabel_report
from consumer.learning.dataset import DATASET_FILE, IMAGES_DIR
from schemas.manifest import Calibration
from schemas.policy import PolicyFit
from scoring.harm import operating_point

log = logging.getLogger(__name__)

ALLOW, REVIEW, BLOCK = 0, 1, 2
CALIBRATION_FILE = "calibration.json"
GRID_POINTS = 400
NEUTRAL_GREY = (128, 128, 128)  # the neutral image of `memeguard evaluate` on HarMeme (consumer/evaluate/harmeme.py)


# --- the labelled data, scored ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scored:
    """The labelled data run through a bundle: scores plus what the data says is harmful."""

    ids: list[str]
    labels: list[str]  # technique names, the bundle's column order
    probs: np.ndarray  # float32 [N, K] technique probabilities
    harmful: np.ndarray | None  # float32 [N] P(harmful), None without a harm head
    gold: np.ndarray  # bool [N, K] technique labels (all False where the data has none)
    truth: np.ndarray  # bool [N]: harmful per the data (moderator block, severe gold technique, HarMeme label)
    decisions_from: str  # "moderators" | "gold_labels" | "harm_labels"
    source: str
    severity: np.ndarray | None = None  # float32 [N, 3] P(not / somewhat / very harmful)
    groups: list[str] = field(default_factory=list)  # split key: memes with the same text stay on one side
    technique_labels: bool = True  # False for HarMeme: no technique gold, no technique F1

    def subset(self, idx: np.ndarray) -> "Scored":
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return Scored([self.ids[i] for i in idx], self.labels, self.probs[idx], pick(self.harmful),
                      self.gold[idx], self.truth[idx], self.decisions_from, self.source, pick(self.severity),
                      [self.groups[i] for i in idx] if self.groups else [], self.technique_labels)


def resolve_data(data: Path, images: Path | None) -> tuple[Path, Path | None]:
    """A dataset folder (dataset.json + images/), a SemEval-format file (images/ beside it by default) or a
    HarMeme .jsonl (no images: folder None)."""
    file = data / DATASET_FILE if data.is_dir() else data
    if not file.is_file():
        raise ConfigError(f"--data {data}: no {DATASET_FILE} there. Build one with `memeguard dataset build`.")
    if is_harmeme_file(file):
        return file, None
    folder = images or (file.parent / IMAGES_DIR)
    if not folder.is_dir():
        raise ConfigError(f"images folder {folder} is missing; pass --images.")
    return file, folder


def harmful_truth(records: list[dict[str, Any]], policy: DecisionPolicy) -> tuple[np.ndarray, str]:
    if all("severity" in r and "labels" not in r for r in records):  # HarMeme (evaluate.harmeme.load_harmeme)
        return np.array([r["severity"] > 0 for r in records], dtype=bool), "harm_labels"
    if all(r.get("decision") in ("block", "allow") for r in records):
        return np.array([r["decision"] == "block" for r in records], dtype=bool), "moderators"
    severe = set(policy.severe_techniques)
    return np.array([bool(severe & set(r.get("labels") or [])) for r in records], dtype=bool), "gold_labels"


def _group(record: dict[str, Any]) -> str:
    text = " ".join(str(record.get("text") or "").lower().split())
    return f"text:{text}" if text else f"id:{record['id']}"


def score_data(runtime: BundleRuntime, data: Path, images: Path | None, policy: DecisionPolicy,
               batch_size: int = 16, progress: bool = True, max_pixels: int = 40_000_000) -> Scored:
    file, folder = resolve_data(data, images)
    harmeme = folder is None
    if harmeme:
        records, skipped = load_harmeme(file)
        if skipped:
            log.info("%s: %d records without a severity label left out", file.name, skipped)
        if not records:
            raise ConfigError(f"{file} holds no HarMeme record with a severity label")
    else:
        records = load_records(file)
    side = runtime.manifest.image.size if runtime.manifest.image is not None else NEUTRAL_IMAGE_SIDE
    neutral = Image.new("RGB", (NEUTRAL_IMAGE_SIDE, NEUTRAL_IMAGE_SIDE), NEUTRAL_GREY)
    kept, probs, harmful, severity = [], [], [], []
    bar = tqdm(total=len(records), desc=f"score {runtime.manifest.name}@{runtime.manifest.version}", unit="meme",
               disable=not progress, file=sys.stderr)
    for start in range(0, len(records), batch_size):
        batch, imgs = [], []
        for r in records[start:start + batch_size]:
            if harmeme:
                imgs.append(neutral)
                batch.append(r)
                continue
            try:
                # Decoded as the worker decodes (downscaled on decode to the model's input side), so the scores
                # fitted here are the scores the worker will compute for the same bytes.
                imgs.append(decode_image((folder / str(r["image"])).read_bytes(), max_pixels, target=side))
                batch.append(r)
            except (OSError, InputError) as e:
                log.warning("record %s: image %s missing or undecodable (%s); left out", r["id"], r["image"], e)
        if batch:
            pred = runtime.predict(imgs, [str(r.get("text") or "") for r in batch])
            probs.append(pred.technique_probs)
            if pred.harmful_probs is not None:
                harmful.append(pred.harmful_probs)
            if pred.severity_probs is not None:
                severity.append(pred.severity_probs)
            kept.extend(batch)
        bar.update(len(records[start:start + batch_size]))
    bar.close()
    if not kept:
        raise ConfigError(f"none of the {len(records)} records of {file} has a readable image")
    labels = list(runtime.manifest.labels)
    truth, origin = harmful_truth(kept, policy)
    return Scored(
        ids=[str(r["id"]) for r in kept], labels=labels, probs=np.concatenate(probs),
        harmful=np.clip(np.concatenate(harmful), 0.0, 1.0) if harmful else None,
        gold=multi_hot([r.get("labels") or [] for r in kept], labels), truth=truth,
        decisions_from=origin, source=f"{file.name} ({len(kept)} records)",
        severity=np.clip(np.concatenate(severity), 0.0, 1.0) if severity else None,
        groups=[_group(r) for r in kept], technique_labels=not harmeme,
    )


# --- the policy, vectorised -----------------------------------------------------------------------------------
def decide_all(probs: np.ndarray, harmful: np.ndarray | None, thresholds: np.ndarray, labels: list[str],
               policy: DecisionPolicy, severity: np.ndarray | None = None) -> np.ndarray:
    """int [N]: ALLOW / REVIEW / BLOCK, exactly as `policy.decide` on each row as the worker calls it (a test
    holds them equal): flags compare float32 probabilities with float32 thresholds (`BundleRuntime.flags`);
    cut-offs compare the float64 value of each float32 score."""
    flagged = np.asarray(probs, dtype=np.float32) >= np.asarray(thresholds, dtype=np.float32)
    score = np.asarray(probs, dtype=np.float32).astype(np.float64)
    severe = np.array([name in policy.severe_techniques for name in labels], dtype=bool)
    severe_flagged = flagged & severe
    n = len(score)
    block = np.zeros(n, dtype=bool)
    harm_review = np.zeros(n, dtype=bool)
    if harmful is not None:
        h = np.asarray(harmful, dtype=np.float32).astype(np.float64)
        block |= h >= policy.harm_block
        harm_review = h >= policy.harm_review
    if severity is not None:
        block |= np.asarray(severity, dtype=np.float32).astype(np.float64)[:, -1] >= policy.severity_block
    technique_block = (severe_flagged & (score >= policy.block_min_score)).any(axis=1)
    block |= technique_block & (harm_review if harmful is not None else True)
    review = harm_review | (severe_flagged & (score >= policy.technique_review_min_score)).any(axis=1)
    if policy.review_min_flags:
        review |= flagged.sum(axis=1) >= policy.review_min_flags
    return np.where(block, BLOCK, np.where(review, REVIEW, ALLOW))


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 1.0  # nothing predicted: precision 1 (as zero_division=1)


def decision_report(decisions: np.ndarray, moderator_block: np.ndarray) -> dict[str, float]:
    """Rates of each decision, and precision / recall of `block` and `review` against the harmful memes
    (the promotion gate's figures).

    review precision: share of reviewed memes that are harmful (review worth a moderator's time);
    review recall: share of harmful memes sent to review; caught recall: blocked or reviewed.
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


def technique_report(s: Scored, thresholds: np.ndarray) -> dict[str, Any] | None:
    """Technique micro/macro F1 of the flags at `thresholds`; None where the data has no technique labels."""
    if not s.technique_labels:
        return None
    flags = np.asarray(s.probs, dtype=np.float32) >= np.asarray(thresholds, dtype=np.float32)
    return multilabel_report(s.gold, flags, s.labels)


def full_report(s: Scored, thresholds: np.ndarray, policy: DecisionPolicy) -> dict[str, Any]:
    """Decision figures (`decision_report`) and technique F1 of one bundle's flags and policy (the gate's input)."""
    report: dict[str, Any] = decision_report(
        decide_all(s.probs, s.harmful, thresholds, s.labels, policy, s.severity), s.truth)
    techniques = technique_report(s, thresholds)
    if techniques is not None:
        report.update(micro_f1=techniques["micro_f1"], macro_f1=techniques["macro_f1"],
                      per_technique=techniques["per_technique"])
    return report


def figures(decisions: np.ndarray, truth: np.ndarray, base_rate: float) -> dict[str, float]:
    """Rates on the data and expected at `base_rate` (scoring.harm.operating_point, plus the split of the
    expected flagged share into review and block)."""
    flag, block = decisions != ALLOW, decisions == BLOCK
    pos, neg = truth.astype(bool), ~truth.astype(bool)
    op = operating_point(truth, flag, block, base_rate)
    share = lambda m, w: float(m[w].mean()) if w.any() else 0.0  # noqa: E731
    block_at_base = base_rate * share(block, pos) + (1 - base_rate) * share(block, neg)
    out = {
        "n": float(len(decisions)), "harmful_rate": float(truth.mean()) if len(truth) else 0.0,
        "review_rate": op.review_rate, "block_rate": op.block_rate, "allow_rate": op.allow_rate,
        "flagged_rate": float(flag.mean()), "blocked": float(block.sum()),
        "block_precision": op.block_precision, "harmful_caught": op.harmful_caught,
        "block_recall": share(block, pos),
        "flagged_rate_at_base": op.flagged_rate_at_base, "block_rate_at_base": block_at_base,
        "review_rate_at_base": op.flagged_rate_at_base - block_at_base,
        "allow_rate_at_base": 1.0 - op.flagged_rate_at_base,
        "block_precision_at_base": op.block_precision_at_base,
    }
    return {k: round(float(v), 6) for k, v in out.items()}


# --- the search ------------------------------------------------------------------------------------------------
def cut_candidates(values: np.ndarray | None, points: int = GRID_POINTS) -> np.ndarray:
    """0 (everything), the midpoints between consecutive distinct scores (between quantiles for large samples)
    and 1.0 (nothing): every cut that changes a decision, each placed in a gap, never on a meme's score."""
    if values is None or not len(values):
        return np.array([0.0, 1.0])
    unique = np.unique(np.asarray(values, dtype=np.float32).astype(np.float64))
    if len(unique) > points:
        unique = np.unique(np.quantile(unique, np.linspace(0, 1, points), method="higher"))
    return np.unique(np.r_[0.0, (unique[1:] + unique[:-1]) / 2, 1.0])


@dataclass(frozen=True)
class Fit:
    policy: DecisionPolicy
    target_met: bool
    figures: dict[str, float]  # of the fitted policy on the fitting part
    notes: list[str]


def _with(policy: DecisionPolicy, **cutoffs: float) -> DecisionPolicy:
    return policy.model_copy(update={k: float(v) for k, v in cutoffs.items()})


def _fit_block(s: Scored, thresholds: np.ndarray, policy: DecisionPolicy, base_rate: float, precision: float,
               min_blocked: int, budget: float | None = None) -> tuple[float, float, bool]:
    """(harm_block, severity_block, reached): the pair blocking the most harmful memes at precision >= P at the
    base rate with at least `min_blocked` blocks (and, with a budget, a block share at the base rate within it);
    (1.0, 1.0, False) when none reaches it."""
    pos, neg = s.truth, ~s.truth
    hb_grid = cut_candidates(s.harmful)
    very = None if s.severity is None else np.asarray(s.severity, dtype=np.float32).astype(np.float64)[:, -1]
    sb_grid = cut_candidates(very) if very is not None else np.array([policy.severity_block])
    if not pos.any():
        return 1.0, 1.0, True  # nothing harmful to block: blocking nothing is right
    # Blocks that do not depend on (harm_block, severity_block): severe techniques while P(harmful) >= harm_review.
    # (Scores of exactly 1.0 block at any cut-off, so the pair (1.0, 1.0) adds nothing to these.)
    fixed = decide_all(s.probs, s.harmful, thresholds, s.labels, _with(policy, harm_block=1.0, severity_block=1.0),
                       s.severity) == BLOCK
    h = np.asarray(s.harmful, dtype=np.float32).astype(np.float64)
    very_hits = (very[None, :] >= sb_grid[:, None]) if very is not None else np.zeros((1, len(h)), dtype=bool)
    best: tuple[tuple, tuple[float, float]] | None = None
    for hb in hb_grid:
        block = fixed[None, :] | (h >= hb)[None, :] | very_hits  # [len(sb_grid), N]
        tpr = block[:, pos].mean(axis=1)
        fpr = block[:, neg].mean(axis=1) if neg.any() else np.zeros(len(block))
        tp, fp = base_rate * tpr, (1 - base_rate) * fpr
        prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
        ok = (prec >= precision - 1e-12) & (block.sum(axis=1) >= max(min_blocked, 1))
        if budget is not None:
            ok &= tp + fp <= budget + 1e-12
        for j in np.flatnonzero(ok):
            key = (tpr[j], -fpr[j], hb, sb_grid[j])  # most harmful blocked; then fewest harmless; then highest cuts
            if best is None or key > best[0]:
                best = (key, (float(hb), float(sb_grid[j])))
    if best is None:
        return 1.0, 1.0, False
    return best[1][0], best[1][1], True


def _fit_review(s: Scored, thresholds: np.ndarray, policy: DecisionPolicy, base_rate: float,
                budget: float) -> tuple[float, bool]:
    """(harm_review, reached): the lowest cut-off whose expected review + block share at the base rate is within
    the budget (flagged grows as the cut-off falls); 1.0 and False when even that exceeds it."""
    pos, neg = s.truth, ~s.truth
    for hr in cut_candidates(s.harmful):  # ascending: the first that fits catches the most
        flag = decide_all(s.probs, s.harmful, thresholds, s.labels, _with(policy, harm_review=hr), s.severity) != ALLOW
        at_base = (base_rate * (flag[pos].mean() if pos.any() else 0.0)
                   + (1 - base_rate) * (flag[neg].mean() if neg.any() else 0.0))
        if at_base <= budget + 1e-12:
            return float(hr), True
    return 1.0, False


def target_check(fig: dict[str, float], truth: np.ndarray, review_rate: float | None, precision: float | None,
                 min_blocked: int) -> tuple[bool, list[str]]:
    """Whether figures of a policy meet the target; the reasons where they do not."""
    misses = []
    if review_rate is not None and fig["flagged_rate_at_base"] > review_rate + 1e-9:
        misses.append(f"review + block at the base rate {fig['flagged_rate_at_base']:.3f} > {review_rate}")
    if precision is not None and truth.any():
        if fig["blocked"] < max(min_blocked, 1):
            misses.append(f"blocks {int(fig['blocked'])} memes (< {max(min_blocked, 1)}): blocking nothing is not "
                          f"a block precision while the data has harmful memes")
        elif fig["block_precision_at_base"] < precision - 1e-9:
            misses.append(f"block precision at the base rate {fig['block_precision_at_base']:.3f} < {precision}")
    return not misses, misses


def fit_policy(s: Scored, thresholds: np.ndarray, policy: DecisionPolicy, base_rate: float,
               target_review_rate: float | None, target_precision: float | None, min_blocked: int = 10) -> Fit:
    """The policy's harm cut-offs fitted to the target on `s` (see the module docstring); thresholds untouched."""
    if target_review_rate is None and target_precision is None:
        raise ConfigError("give --target-review-rate, --target-precision or both")
    if s.harmful is None:
        raise ConfigError("the bundle has no harm head (no output with role 'harm'): calibrate fits the policy's "
                          "harm cut-offs and has nothing to fit. Export a bundle with a harm head.")
    def check(pol: DecisionPolicy) -> tuple[bool, list[str], dict[str, float]]:
        fig = figures(decide_all(s.probs, s.harmful, thresholds, s.labels, pol, s.severity), s.truth, base_rate)
        return (*target_check(fig, s.truth, target_review_rate, target_precision, min_blocked), fig)

    fitted = policy
    for _ in range(3):  # the severe-technique block depends on harm_review: refit until both settle
        before = fitted
        if target_precision is not None:
            hb, sb, _ = _fit_block(s, thresholds, fitted, base_rate, target_precision, min_blocked,
                                   target_review_rate)
            fitted = _with(fitted, harm_block=hb, severity_block=sb)
        if target_review_rate is not None:
            hr, _ = _fit_review(s, thresholds, fitted, base_rate, target_review_rate)
            fitted = _with(fitted, harm_review=hr)
        if fitted == before:
            break
    met, notes, fig = check(fitted)
    if not met and target_review_rate is not None and target_precision is not None:
        # A lower harm_review also lets the severe-technique rule block more (it needs P(harmful) >= harm_review),
        # which can cost block precision: walk the review cut-off up from the lowest, refitting the block
        # cut-offs at each step, and take the first (the most harmful memes caught) that meets both targets.
        for hr in cut_candidates(s.harmful):
            hb, sb, _ = _fit_block(s, thresholds, _with(fitted, harm_review=hr), base_rate, target_precision,
                                   min_blocked, target_review_rate)
            candidate = _with(fitted, harm_review=hr, harm_block=hb, severity_block=sb)
            ok, _, candidate_fig = check(candidate)
            if ok:
                fitted, met, notes, fig = candidate, True, [], candidate_fig
                break
    if target_precision is not None and not met:
        technique_blocks = int((decide_all(s.probs, s.harmful, thresholds, s.labels,
                                           _with(fitted, harm_block=1.0, severity_block=1.0), s.severity)
                                == BLOCK).sum())
        if technique_blocks:
            notes.append(f"{technique_blocks} memes are blocked by the severe-technique rule (a severe technique at "
                         f">= block_min_score {fitted.block_min_score} while P(harmful) >= harm_review), which "
                         "calibrate does not fit")
    if target_review_rate is not None and fitted.harm_review >= 1.0 and not met:
        floor = figures(decide_all(s.probs, s.harmful, thresholds, s.labels, _with(fitted, harm_review=1.0),
                                   s.severity), s.truth, base_rate)
        notes.append(f"with no review on the harm score the policy still flags {floor['flagged_rate_at_base']:.3f} "
                     f"at the base rate (blocks and technique rules: review_min_flags "
                     f"{fitted.review_min_flags}, technique_review_min_score {fitted.technique_review_min_score})")
    return Fit(fitted, met, fig, notes)


def split(s: Scored, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held back) row indices: a seeded split of the groups (same text, same side), stratified by
    whether a group holds a harmful meme. `holdout` 0: everything is fitted on, nothing held back."""
    n = len(s.ids)
    if not 0.0 <= holdout < 1.0:
        raise ConfigError(f"--holdout {holdout}: give a share in [0, 1)")
    if holdout == 0.0:
        return np.arange(n), np.array([], dtype=int)
    groups: dict[str, list[int]] = {}
    for i, g in enumerate(s.groups or s.ids):
        groups.setdefault(g, []).append(i)
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for harmful in (True, False):
        names = sorted(g for g, rows in groups.items() if bool(s.truth[rows].any()) == harmful)
        rng.shuffle(names)
        for g in names[:round(holdout * len(names))]:
            held.extend(groups[g])
    mask = np.zeros(n, dtype=bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


# --- the new bundle ------------------------------------------------------------------------------------------
def bump_version(version: str) -> str:
    """0.1.0 -> 0.1.1; a version that does not end in a number gets `.1` appended."""
    head, _, last = version.rpartition(".")
    return f"{head}.{int(last) + 1}" if last.isdigit() and head else f"{version}.1"


def write_calibrated_bundle(base: ModelBundle, out_dir: Path, policy: DecisionPolicy, calibration: Calibration,
                            report: dict[str, Any], version: str | None = None) -> ModelBundle:
    """Same ONNX graph, files and technique thresholds; new policy + version + calibration record; staged, then
    renamed in place. Raises when the written bundle's technique thresholds differ from the base's."""
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
            "policy": policy, "calibration": calibration, "files": digest_files(staging, names),
        })
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        written = ModelBundle.load(staging)  # the checks the worker applies
        tech = written.manifest.output("techniques")
        if (list(written.manifest.thresholds) != list(base.manifest.thresholds)
                or tech is None or list(tech.thresholds) != list(base.manifest.thresholds)):
            raise RuntimeError("calibrate changed technique thresholds; it must only change the policy")
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


POLICY_KEYS = ("harm_review", "harm_block", "severity_block")
TABLE_KEYS = ("review_rate", "block_rate", "allow_rate", "flagged_rate", "block_precision", "harmful_caught")


def before_after_table(report: dict[str, Any]) -> str:
    """The policy cut-offs, then the rates before / after on the fitting part, the held-back part and expected at
    the base rate (from the fitting part), then technique micro-F1."""
    b, a = report["policy_before"], report["policy_after"]
    lines = [f"policy before: {b['id']}", f"policy after:  {a['id']}", f"{'':16}{'before':>8}{'after':>8}"]
    lines += [f"{k:16}{b[k]:8.4f}{a[k]:8.4f}" for k in POLICY_KEYS]
    p = report["base_rate"]
    parts = [(k, f"{name} n={int(report['before'][k]['n'])}", False) for k, name in
             (("fit", "fit"), ("held_back", "held")) if report["before"].get(k)]
    parts += [(k, f"{'fit' if k == 'fit' else 'held'} @p", True) for k, _, _ in list(parts)]
    at_base = {"review_rate": "review_rate_at_base", "block_rate": "block_rate_at_base",
               "allow_rate": "allow_rate_at_base", "flagged_rate": "flagged_rate_at_base",
               "block_precision": "block_precision_at_base", "harmful_caught": "harmful_caught"}
    lines += ["", f"on the fitting part (fit), the held-back part (held), and expected at base rate p={p:.3g} "
              "(@p);", "flagged = review + block; block precision '-' where nothing is blocked",
              f"{'':16}" + "".join(f"{name:>16}" for _, name, _ in parts),
              f"{'':16}" + f"{'before':>8}{'after':>8}" * len(parts)]
    for key in TABLE_KEYS:
        row = f"{key:16}"
        for part, _, base in parts:
            for side in ("before", "after"):
                fig = report[side][part]
                if key == "block_precision" and not fig["blocked"]:
                    row += f"{'-':>8}"
                else:
                    row += f"{fig[at_base[key] if base else key]:8.3f}"
        lines.append(row)
    t = report["techniques"]
    if t["micro_f1_before"] is None:
        lines.append("\ntechnique micro-F1: n/a (the data has no technique labels); technique thresholds "
                     f"unchanged: {t['thresholds_unchanged']}")
    else:
        lines.append(f"\ntechnique micro-F1 {t['micro_f1_before']:.4f} -> {t['micro_f1_after']:.4f} "
                     f"(thresholds unchanged: {t['thresholds_unchanged']})")
    return "\n".join(lines)


def _flat(figs: dict[str, dict[str, float]], micro: float | None) -> dict[str, float]:
    """Fitting-part figures, the held-back ones prefixed `held_back_`, and technique micro-F1 when measured."""
    out = dict(figs["fit"])
    out.update({f"held_back_{k}": v for k, v in figs.get("held_back", {}).items()})
    if micro is not None:
        out["technique_micro_f1"] = round(float(micro), 6)
    return out


def calibrate(bundle_path: Path, data: Path, out: Path, target_review_rate: float | None,
              target_precision: float | None, policy: DecisionPolicy | None = None, images: Path | None = None,
              base_rate: float | None = None, holdout: float = 0.3, seed: int = 0, min_blocked: int = 10,
              version: str | None = None, progress: bool = True) -> tuple[ModelBundle, dict[str, Any]]:
    """Score `data` with the bundle, fit its policy's harm cut-offs on a fitting part, write the new bundle.

    `policy`: the policy to start from (default: the bundle's own, else the built-in rules)."""
    if target_review_rate is None and target_precision is None:
        raise ConfigError("give --target-review-rate, --target-precision or both")
    for name, v in (("--target-review-rate", target_review_rate), ("--target-precision", target_precision),
                    ("--base-rate", base_rate)):
        if v is not None and not 0.0 <= v <= 1.0:
            raise ConfigError(f"{name} {v}: give a share in [0, 1]")
    base = ModelBundle.load(bundle_path)
    if base.manifest.output("harm") is None:
        raise ConfigError(f"bundle {bundle_path} has no harm head (no output with role 'harm'): calibrate fits the "
                          "decision policy's harm cut-offs and has nothing to fit")
    start = serving_policy(base.manifest, policy)
    runtime = BundleRuntime(base, providers="cpu")
    scored = score_data(runtime, data, images, start, progress=progress)
    fit_idx, held_idx = split(scored, holdout, seed)
    fit_part, held = scored.subset(fit_idx), scored.subset(held_idx)
    p = float(fit_part.truth.mean()) if base_rate is None else float(base_rate)
    thresholds = np.asarray(base.manifest.thresholds, dtype=np.float32)
    fit = fit_policy(fit_part, thresholds, start, p, target_review_rate, target_precision, min_blocked)

    def all_figures(pol: DecisionPolicy) -> dict[str, dict[str, float]]:
        out = {}
        for name, part in (("fit", fit_part), ("held_back", held), ("all", scored)):
            if len(part.ids):
                out[name] = figures(decide_all(part.probs, part.harmful, thresholds, part.labels, pol,
                                               part.severity), part.truth, p)
        return out

    target = {k: v for k, v in (("review_rate", target_review_rate), ("block_precision", target_precision))
              if v is not None}
    new_version = version or bump_version(base.manifest.version)
    cut = json.dumps({k: getattr(fit.policy, k) for k in POLICY_KEYS}, sort_keys=True)
    digest = hashlib.sha256(f"{runtime.version}|{scored.source}|{cut}".encode()).hexdigest()[:8]
    fitted_on = (f"{scored.source}, harmful from {scored.decisions_from}; fitted on {len(fit_idx)}, "
                 f"{len(held_idx)} held back (seed {seed})")
    before_fig, after_fig = all_figures(start), all_figures(fit.policy)
    policy_fit = PolicyFit(data=fitted_on, target=target, target_met=fit.target_met, base_rate=p,
                           figures=_flat(after_fig, None))
    new_policy = fit.policy.model_copy(update={"id": f"{base.manifest.name}-{new_version}-cal-{digest}",
                                               "fit": policy_fit})
    # The technique flags: the thresholds the new bundle carries are the base's (checked once it is written).
    tech = technique_report(scored, thresholds)
    micro = None if tech is None else tech["micro_f1"]
    calibration = Calibration(
        base_bundle=runtime.version, base_thresholds=[float(t) for t in base.manifest.thresholds],
        base_policy=start.id, data=fitted_on, n_records=len(scored.ids), decisions_from=scored.decisions_from,
        target=target, target_met=fit.target_met, base_rate=p,
        base_rate_from="data" if base_rate is None else "flag", holdout=holdout, n_held_back=len(held_idx),
        before=_flat(before_fig, micro), after=_flat(after_fig, micro),
    )
    report: dict[str, Any] = {
        "calibration": calibration.model_dump(mode="json"), "policy_before": start.model_dump(mode="json"),
        "policy_after": new_policy.model_dump(mode="json"), "base_rate": p,
        "base_rate_from": calibration.base_rate_from, "target": target, "target_met": fit.target_met,
        "notes": fit.notes, "min_blocked": min_blocked,
        "split": {"holdout": holdout, "seed": seed, "n_fit": len(fit_idx), "n_held_back": len(held_idx),
                  "grouped_by": "normalised text", "stratified_by": "harmful"},
        "data": {"source": scored.source, "n": len(scored.ids), "decisions_from": scored.decisions_from,
                 "harmful": int(scored.truth.sum())},
        "before": before_fig, "after": after_fig,
        "techniques": {"micro_f1_before": micro, "micro_f1_after": micro,
                       "macro_f1_before": None if tech is None else tech["macro_f1"],
                       "macro_f1_after": None if tech is None else tech["macro_f1"],
                       "thresholds_unchanged": True},
    }
    new = write_calibrated_bundle(base, out, new_policy, calibration, report, new_version)
    # Measured again from the written bundle's own manifest: its flags on the same scores.
    tech_after = technique_report(scored, np.asarray(new.manifest.thresholds, dtype=np.float32))
    if tech_after is not None and tech_after["micro_f1"] != micro:  # pragma: no cover - write_calibrated_bundle
        raise RuntimeError("technique micro-F1 changed: calibrate must not touch the technique flags")
    return new, report
