"""Nested cross-validation of technique-head candidates over SemEval-2021 Task 6 train+dev (750 memes).

    nice -n 10 .venv/bin/python -m research.technique_nested_cv                 # all candidates + report
    nice -n 10 .venv/bin/python -m research.technique_nested_cv --only ptc_w0.3 # one candidate (partial)
    nice -n 10 .venv/bin/python -m research.technique_nested_cv --report-only   # aggregate stored partials

Outer: 5-fold shuffled KFold, repeated for seeds 0, 1, 2 (15 outer folds). Inner: 4-fold shuffled KFold on the
outer-training part; inner out-of-fold probabilities tune the per-label thresholds
(models.thresholds.tune_thresholds, micro objective) and score the candidate for selection. The outer fold
scores the candidate refitted on the whole outer-training part, binarised at those thresholds. Every candidate
is evaluated alone under the same protocol (same folds: paired), and the "select inside" procedure picks, in
each outer fold, a candidate from inner scores only; its outer score is the honest estimate of the procedure.

The official SemEval test split is never read (it is not shipped). HarMeme texts are never printed or logged.
"""

import argparse
import copy
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
# A private feature cache (seeded from the project's .cache/features) so new entries (MiniLM, PTC sentences)
# never race another engineer's writes into the shared store files.
PRIVATE_CACHE = Path(os.environ.get("RESEARCH_CACHE_DIR", "/tmp/memeguard-research-cache"))
os.environ["MEMEGUARD_CACHE_DIR"] = str(PRIVATE_CACHE)

from models.assemble import build_model  # noqa: E402
from models.config import RunConfig, load_config  # noqa: E402
from models.data import load_dataset, multi_hot  # noqa: E402
from models.feature_cache import image_features, text_features  # noqa: E402
from models.fit_heads import fit_heads, make_head, predict_heads  # noqa: E402
from models.losses import positive_weights  # noqa: E402
from models.metrics import binarize, summary, top_k_constant  # noqa: E402
from models.paths import data_dir  # noqa: E402
from models.thresholds import tune_thresholds  # noqa: E402
from schemas.techniques import TECHNIQUES  # noqa: E402

OUTER_SEEDS = (0, 1, 2)
OUTER_FOLDS = 5
INNER_FOLDS = 4
MACHINE = "2-core shared CPU"
PARTIAL_DIR = PRIVATE_CACHE / "nested_cv_partials"
RESULTS = REPO / "bench" / "results" / "technique_nested_cv.json"
MARKDOWN = REPO / "research" / "technique_nested_cv.md"

# PTC class -> our labels. The 12 one-to-one classes (Black-and-White_Fallacy counted among them) map to one
# label; the two merged classes are dropped as positives and their member labels are masked (not trained) on
# sentences that carry them, since the span says "one of these" and never which.
PTC_MAP = {
    "Loaded_Language": "Loaded Language",
    "Name_Calling,Labeling": "Name calling/Labeling",
    "Repetition": "Repetition",
    "Doubt": "Doubt",
    "Exaggeration,Minimisation": "Exaggeration/Minimisation",
    "Appeal_to_fear-prejudice": "Appeal to fear/prejudice",
    "Flag-Waving": "Flag-waving",
    "Causal_Oversimplification": "Causal Oversimplification",
    "Appeal_to_Authority": "Appeal to authority",
    "Slogans": "Slogans",
    "Thought-terminating_Cliches": "Thought-terminating cliché",
    "Black-and-White_Fallacy": "Black-and-white Fallacy/Dictatorship",
}
PTC_MERGED = {
    "Whataboutism,Straw_Men,Red_Herring": (
        "Whataboutism",
        "Misrepresentation of Someone's Position (Straw Man)",
        "Presenting Irrelevant Data (Red Herring)",
    ),
    "Bandwagon,Reductio_ad_hitlerum": ("Bandwagon", "Reductio ad hitlerum"),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def seed_private_cache() -> None:
    src = REPO / ".cache" / "features"
    dst = PRIVATE_CACHE / "features"
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.glob("*.pt"):
        if not (dst / f.name).exists():
            shutil.copy2(f, dst / f.name)


# ----------------------------------------------------------------------------------------------- features
@dataclass
class Data:
    memes: list
    y: np.ndarray
    img: np.ndarray  # EfficientNet-Lite0 (shared by both configs)
    txt: dict[str, np.ndarray]  # per text encoder: "mpnet", "minilm"
    ptc_txt: np.ndarray | None = None
    ptc_y: np.ndarray | None = None
    ptc_mask: np.ndarray | None = None
    harm: np.ndarray | None = None  # [750, 4]: P(harmful), P(not), P(somewhat), P(very)


# Loaded Language and Name calling are the memes' own most frequent labels (hundreds of examples): PTC rows do
# not train them (masked), which halves the PTC rows (and the fit time) and keeps PTC's supervision on the
# labels memes have few examples of.
PTC_NOT_TRAINED = {"Loaded Language", "Name calling/Labeling"}


def ptc_sentences() -> tuple[list[str], np.ndarray, np.ndarray]:
    """Each span's sentence(s) (article lines it overlaps), one example per distinct sentence, labels unioned.

    Returns texts, y [M, 22] and mask [M, 22] (1 = label trained on this row). Mapped labels are trained
    (positive where a span says so, negative otherwise); labels with no PTC counterpart (Smears, Glittering
    generalities, Transfer, Appeal to (Strong) Emotions, Obfuscation) and PTC_NOT_TRAINED are masked on every
    PTC row, members of a merged class are masked on rows that carry it, and a sentence with no trained
    positive is dropped.
    """
    root = data_dir() / "ptc"
    idx = {t: i for i, t in enumerate(TECHNIQUES)}
    mapped = np.zeros(len(TECHNIQUES), dtype=np.float32)
    for lab in PTC_MAP.values():
        mapped[idx[lab]] = 1
    for members in PTC_MERGED.values():
        for lab in members:
            mapped[idx[lab]] = 1  # trainable as a negative when no merged span is present
    rows: dict[tuple[str, int, int], dict[str, set]] = {}
    for lf in sorted((root / "train-labels-task2-technique-classification").glob("*.labels")):
        for line in lf.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            art, tech, start, end = line.split("\t")
            text = (root / "train-articles" / f"article{art}.txt").read_text(encoding="utf-8")
            s, e = int(start), int(end)
            a = text.rfind("\n", 0, s) + 1
            b = text.find("\n", max(e - 1, s))
            b = len(text) if b < 0 else b
            r = rows.setdefault((art, a, b), {"pos": set(), "masked": set()})
            if tech in PTC_MAP:
                r["pos"].add(PTC_MAP[tech])
            elif tech in PTC_MERGED:
                r["masked"].update(PTC_MERGED[tech])
            else:
                raise ValueError(f"unknown PTC class {tech}")
    texts, ys, masks = [], [], []
    cache: dict[str, str] = {}
    for (art, a, b), r in sorted(rows.items()):
        if art not in cache:
            cache[art] = (root / "train-articles" / f"article{art}.txt").read_text(encoding="utf-8")
        sent = " ".join(cache[art][a:b].split())
        if not sent:
            continue
        yv = np.zeros(len(TECHNIQUES), dtype=np.float32)
        for lab in r["pos"] - PTC_NOT_TRAINED:
            yv[idx[lab]] = 1
        if not yv.any():
            continue  # only Loaded Language / Name calling (or merged) spans: nothing trained on this row
        m = mapped.copy()
        for lab in r["masked"] | PTC_NOT_TRAINED:
            m[idx[lab]] = 0
        texts.append(sent)
        ys.append(yv)
        masks.append(m)
    return texts, np.stack(ys), np.stack(masks)


def harm_features(mpnet_encoder, meme_txt: np.ndarray) -> np.ndarray:
    """P(harmful) and the three severity probabilities for each meme, from logistic regressions (C=0.0005 on
    standardised MPNet text features) fitted on HarMeme train+val of both domains. No HarMeme text is logged."""
    from sklearn.linear_model import LogisticRegression

    from models.harm_data import load_pool

    pool = load_pool()
    h_txt = text_features(mpnet_encoder, pool)
    sev = np.asarray([m.severity for m in pool])
    mean, std = h_txt.mean(0), np.clip(h_txt.std(0), 1e-3, None)
    z = (h_txt - mean) / std
    binary = LogisticRegression(C=0.0005, max_iter=2000).fit(z, (sev > 0).astype(int))
    multi = LogisticRegression(C=0.0005, max_iter=2000).fit(z, sev)
    zm = (meme_txt - mean) / std
    log(f"harm LR fitted on {len(pool)} HarMeme train+val records (texts not shown)")
    return np.column_stack([binary.predict_proba(zm)[:, 1], multi.predict_proba(zm)]).astype(np.float32)


def load_data(need_minilm: bool, need_ptc: bool, need_harm: bool) -> tuple[Data, dict[str, RunConfig]]:
    torch.set_num_threads(1)
    memes = load_dataset("train") + load_dataset("dev")
    y = multi_hot(memes)
    cfgs = {
        "mpnet": load_config(REPO / "configs" / "default.yaml"),
        "minilm": load_config(REPO / "configs" / "minilm_efficientnet.yaml"),
    }
    t0 = time.time()
    mp = build_model(cfgs["mpnet"], len(TECHNIQUES), False)
    img = image_features(mp.image_encoder, memes)
    txt = {"mpnet": text_features(mp.text_encoder, memes)}
    log(f"default features {img.shape} + {txt['mpnet'].shape} in {time.time() - t0:.0f} s")
    data = Data(memes, y, img, txt)
    if need_minilm:
        t0 = time.time()
        ml = build_model(cfgs["minilm"], len(TECHNIQUES), False)
        data.txt["minilm"] = text_features(ml.text_encoder, memes)
        log(f"MiniLM features {data.txt['minilm'].shape} in {time.time() - t0:.0f} s")
    if need_ptc:
        t0 = time.time()
        texts, py, pm = ptc_sentences()
        data.ptc_txt = text_features(mp.text_encoder, [SimpleNamespace(text=t) for t in texts])
        data.ptc_y, data.ptc_mask = py, pm
        log(f"PTC: {len(texts)} sentences, {int(py.sum())} mapped positives, features in {time.time() - t0:.0f} s")
    if need_harm:
        t0 = time.time()
        data.harm = harm_features(mp.text_encoder, data.txt["mpnet"])
        log(f"harm features {data.harm.shape} in {time.time() - t0:.0f} s")
    return data, cfgs


# ----------------------------------------------------------------------------------------------- fitting
def fit_weighted(
    cfg: RunConfig, img: np.ndarray, txt: np.ndarray, y: np.ndarray,
    txt_x: np.ndarray | None = None, y_x: np.ndarray | None = None, w_x: np.ndarray | None = None,
) -> list:
    """models.fit_heads' full-batch L-BFGS, plus optional text-only extra rows (txt_x, y_x) with per-element
    loss weights w_x [M, 22].

    Standardisation statistics and positive weights come from the memes only, and the loss is
    (sum(bce_memes) + sum(w_x * bce_extra)) / (n_memes * 22), so extra rows add evidence without changing how the
    L2 penalty weighs against the memes. Extra rows have no image: they are scored as if their image feature
    were the training memes' mean, which the head standardises to exactly 0, so their logits use the text
    columns of the linear layer only (same result, ~half the compute). With no extra rows this is fit_heads
    (checked at start).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = cfg.training
        x_img, x_txt, y_t = (torch.as_tensor(a, dtype=torch.float32) for a in (img, txt, y))
        extra = txt_x is not None and len(txt_x) > 0
        if extra:
            xx, yx, wx = (torch.as_tensor(a, dtype=torch.float32) for a in (txt_x, y_x, w_x))
        n_memes, d_img = len(y_t), x_img.shape[1]
        heads = []
        for seed in t.seeds:
            torch.manual_seed(seed)
            head = make_head(cfg, x_img.shape[1], x_txt.shape[1], y_t.shape[1], False)
            head.fit_normalisation(x_img, x_txt)
            pw = positive_weights(y_t, cfg.loss.pos_weight_power) if cfg.loss.pos_weight_power > 0 else None
            head.eval()
            linear = head.fusion.head[-1]
            weights = [p for name, p in head.named_parameters() if name.endswith("weight")]
            opt = torch.optim.LBFGS(
                head.parameters(), lr=1.0, max_iter=t.epochs, history_size=20, line_search_fn="strong_wolfe"
            )
            denom = float(n_memes * y_t.shape[1])
            zx = (xx - head.txt_mean) / head.txt_std if extra else None

            # The closure runs only inside this iteration's opt.step: binding the loop's variables is intended.
            def closure() -> torch.Tensor:
                opt.zero_grad()  # noqa: B023
                bce = torch.nn.functional.binary_cross_entropy_with_logits(
                    head(x_img, x_txt), y_t, pos_weight=pw, reduction="sum")  # noqa: B023
                if extra:
                    lx = zx @ linear.weight[:, d_img:].T + linear.bias  # noqa: B023
                    bx = torch.nn.functional.binary_cross_entropy_with_logits(
                        lx, yx, pos_weight=pw, reduction="none")  # noqa: B023
                    bce = bce + (bx * wx).sum()
                loss = bce / denom + t.weight_decay * sum((p * p).sum() for p in weights)  # noqa: B023
                loss.backward()
                return loss

            opt.step(closure)
            heads.append(head)
        return heads
    finally:
        torch.set_num_threads(threads)


@dataclass
class Candidate:
    name: str
    description: str
    complexity: int  # rank for the selection rule: lower = simpler
    fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (train_idx, test_idx) -> probs [n_test, 22]


def make_candidates(data: Data, cfgs: dict[str, RunConfig], names: list[str] | None) -> list[Candidate]:
    def with_wd(cfg: RunConfig, wd: float) -> RunConfig:
        c = copy.deepcopy(cfg)
        c.training.weight_decay = wd
        return c

    def plain(cfg: RunConfig, txt: np.ndarray) -> Callable:
        def fp(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
            heads = fit_heads(cfg, data.img[tr], txt[tr], data.y[tr])
            return predict_heads(heads, data.img[te], txt[te])

        return fp

    def ptc(cfg: RunConfig, weight: float) -> Callable:
        def fp(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
            assert data.ptc_txt is not None and data.ptc_y is not None and data.ptc_mask is not None
            heads = fit_weighted(cfg, data.img[tr], data.txt["mpnet"][tr], data.y[tr],
                                 data.ptc_txt, data.ptc_y, weight * data.ptc_mask)
            return predict_heads(heads, data.img[te], data.txt["mpnet"][te])

        return fp

    base = cfgs["mpnet"]
    spec: list[tuple[str, str, int, Callable[[], Callable]]] = [
        ("minilm_efficientnet", "old default: MiniLM L2/4/6 + EfficientNet-Lite0 (configs/minilm_efficientnet.yaml)",
         0, lambda: plain(cfgs["minilm"], data.txt["minilm"])),
        ("default_wd0.1", "default with weight_decay 0.1", 1, lambda: plain(with_wd(base, 0.1), data.txt["mpnet"])),
        ("default", "current default: MPNet layers 3/6 + EfficientNet-Lite0, weight_decay 0.03 (configs/default.yaml)",
         2, lambda: plain(base, data.txt["mpnet"])),
        ("default_wd0.01", "default with weight_decay 0.01", 3, lambda: plain(with_wd(base, 0.01), data.txt["mpnet"])),
        ("default_harm4", "default + 4 harm features (P(harmful), 3 severity probs; HarMeme LR, C=0.0005) appended "
         "to the text features", 4, lambda: plain(base, np.hstack([data.txt["mpnet"], data.harm]))),
        ("ptc_w0.3", "default + PTC span sentences as extra text-only training rows (loss weight 0.3; image "
         "feature = the training memes' mean; Loaded Language, Name calling and the labels with no PTC "
         "counterpart masked on PTC rows; sentences with no other positive dropped)", 5, lambda: ptc(base, 0.3)),
    ]
    out = []
    for name, desc, cx, make in spec:
        if names is None or name in names:
            out.append(Candidate(name, desc, cx, make()))
    return out


ALL_NAMES = ["minilm_efficientnet", "default_wd0.1", "default", "default_wd0.01", "default_harm4", "ptc_w0.3"]


# ----------------------------------------------------------------------------------------------- protocol
def outer_splits(n: int) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold

    out = []
    for s in OUTER_SEEDS:
        for k, (tr, te) in enumerate(KFold(OUTER_FOLDS, shuffle=True, random_state=s).split(np.arange(n))):
            out.append((s, k, tr, te))
    return out


def inner_splits(tr: np.ndarray, seed: int, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold

    kf = KFold(INNER_FOLDS, shuffle=True, random_state=1000 + 10 * seed + k)
    return [(tr[a], tr[b]) for a, b in kf.split(tr)]


def run_candidate(c: Candidate, data: Data) -> dict:
    """Per outer fold: inner OOF probs -> thresholds + inner score; refit on outer train -> outer score."""
    y = data.y
    t0 = time.time()
    folds = []
    for seed, k, tr, te in outer_splits(len(y)):
        oof = np.zeros((len(tr), y.shape[1]), dtype=np.float32)
        pos = {m: i for i, m in enumerate(tr)}
        inner_fold_micro = []
        for itr, ite in inner_splits(tr, seed, k):
            oof[[pos[m] for m in ite]] = c.fit_predict(itr, ite)[:, : y.shape[1]]
        thr = tune_thresholds(oof, y[tr], "micro")
        inner = summary(y[tr], binarize(oof, thr))
        for _, ite in inner_splits(tr, seed, k):
            rows = [pos[m] for m in ite]
            inner_fold_micro.append(summary(y[ite], binarize(oof[rows], thr))["micro_f1"])
        probs = c.fit_predict(tr, te)[:, : y.shape[1]]
        outer = summary(y[te], binarize(probs, thr))
        folds.append({
            "seed": seed, "fold": k,
            "inner_micro_f1": inner["micro_f1"], "inner_macro_f1": inner["macro_f1"],
            "inner_fold_micro_f1": inner_fold_micro,
            "outer_micro_f1": outer["micro_f1"], "outer_macro_f1": outer["macro_f1"],
            "thresholds": [float(x) for x in thr],
        })
        log(f"{c.name} seed {seed} fold {k}: inner {inner['micro_f1']:.3f} outer micro {outer['micro_f1']:.3f} "
            f"macro {outer['macro_f1']:.3f}")
    return {"name": c.name, "description": c.description, "complexity": c.complexity, "folds": folds,
            "wall_s": round(time.time() - t0, 1)}


def constant_baseline(y: np.ndarray) -> dict:
    folds = []
    for seed, k, tr, te in outer_splits(len(y)):
        s = summary(y[te], top_k_constant(y[tr], len(te), 3))
        folds.append({"seed": seed, "fold": k, "outer_micro_f1": s["micro_f1"], "outer_macro_f1": s["macro_f1"]})
    return {"name": "constant_top3", "description": "always the 3 most frequent training labels "
            "(models.metrics.top_k_constant)", "folds": folds}


def determinism_check(data: Data, cfgs: dict[str, RunConfig]) -> dict:
    """Seeds 0 and 1 of the default head on one training part: how far apart are their probabilities?
    Also checks fit_weighted (w = 1, no extra rows) against fit_heads."""
    tr, te = outer_splits(len(data.y))[0][2:]
    base = cfgs["mpnet"]
    c0 = copy.deepcopy(base)
    c0.training.seeds = [0]
    c1 = copy.deepcopy(base)
    c1.training.seeds = [1]
    x = data.txt["mpnet"]
    p0 = predict_heads(fit_heads(c0, data.img[tr], x[tr], data.y[tr]), data.img[te], x[te])
    p0b = predict_heads(fit_heads(c0, data.img[tr], x[tr], data.y[tr]), data.img[te], x[te])
    p1 = predict_heads(fit_heads(c1, data.img[tr], x[tr], data.y[tr]), data.img[te], x[te])
    pw = predict_heads(fit_weighted(c0, data.img[tr], x[tr], data.y[tr]), data.img[te], x[te])
    thr = np.full(data.y.shape[1], 0.5)
    out = {
        "same_seed_max_abs_prob_diff": float(np.abs(p0 - p0b).max()),
        "seed0_vs_seed1_max_abs_prob_diff": float(np.abs(p0 - p1).max()),
        "seed0_vs_seed1_decisions_differ_at_0.5": int((binarize(p0, thr) != binarize(p1, thr)).sum()),
        "fit_weighted_vs_fit_heads_max_abs_prob_diff": float(np.abs(p0 - pw).max()),
        "n_test": int(len(te)),
    }
    log(f"determinism: {out}")
    return out


# ----------------------------------------------------------------------------------------------- report
def stats(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return {"mean": round(float(v.mean()), 4), "sd": round(sd, 4), "se": round(sd / math.sqrt(len(v)), 4),
            "values": [round(float(x), 4) for x in v]}


def aggregate(partials: dict[str, dict], baseline: dict, meta: dict) -> dict:
    names = [n for n in ALL_NAMES if n in partials]
    rows = []
    for n in names:
        p = partials[n]
        rows.append({
            "candidate": n, "description": p["description"], "complexity_rank": p["complexity"],
            "micro_f1": stats([f["outer_micro_f1"] for f in p["folds"]]),
            "macro_f1": stats([f["outer_macro_f1"] for f in p["folds"]]),
            "inner_micro_f1_mean": round(float(np.mean([f["inner_micro_f1"] for f in p["folds"]])), 4),
            "wall_s": p["wall_s"], "command": p["command"], "machine": MACHINE,
            "per_fold": [{k: f[k] for k in ("seed", "fold", "inner_micro_f1", "outer_micro_f1", "outer_macro_f1")}
                         for f in p["folds"]],
        })
    # Paired against the current default (same outer folds, same inner folds).
    if "default" in partials:
        ref = partials["default"]["folds"]
        for row in rows:
            own = partials[row["candidate"]]["folds"]
            out = {}
            for metric in ("micro_f1", "macro_f1"):
                d = np.asarray([a[f"outer_{metric}"] - b[f"outer_{metric}"] for a, b in zip(own, ref, strict=True)])
                sd = float(d.std(ddof=1))
                out[metric] = {"mean_diff": round(float(d.mean()), 4), "sd": round(sd, 4),
                               "se": round(sd / math.sqrt(len(d)), 4), "folds_better": int((d > 0).sum()),
                               "folds_worse": int((d < 0).sum())}
            row["paired_vs_default"] = out
    # Selection inside the loop: in each outer fold, choose from inner scores only; score the choice outside.
    n_outer = len(partials[names[0]]["folds"])
    sel_argmax, sel_1se = [], []
    for i in range(n_outer):
        inner = {n: partials[n]["folds"][i] for n in names}
        best = max(names, key=lambda n: inner[n]["inner_micro_f1"])
        sel_argmax.append((best, inner[best]))
        # 1-SE rule inside: the simplest candidate whose pooled inner micro-F1 is within one SE (sd over the
        # inner folds / sqrt(k)) of the best.
        b = inner[best]
        se = float(np.std(b["inner_fold_micro_f1"], ddof=1) / math.sqrt(len(b["inner_fold_micro_f1"])))
        ok = [n for n in names if inner[n]["inner_micro_f1"] >= b["inner_micro_f1"] - se]
        simple = min(ok, key=lambda n: partials[n]["complexity"])
        sel_1se.append((simple, inner[simple]))

    def sel_row(name: str, desc: str, sel: list) -> dict:
        chosen = [s[0] for s in sel]
        return {
            "candidate": name, "description": desc,
            "micro_f1": stats([s[1]["outer_micro_f1"] for s in sel]),
            "macro_f1": stats([s[1]["outer_macro_f1"] for s in sel]),
            "chosen_per_fold": chosen, "chosen_counts": {n: chosen.count(n) for n in sorted(set(chosen))},
            "wall_s": round(sum(partials[n]["wall_s"] for n in names), 1), "command": meta["command_all"],
            "machine": MACHINE,
        }

    selection = [
        sel_row("select_inside_argmax", "per outer fold: the candidate with the best inner-CV micro-F1 "
                "(thresholds tuned on the same inner OOF probabilities)", sel_argmax),
        sel_row("select_inside_1se", "per outer fold: the simplest candidate within one SE (inner folds) of the "
                "best inner-CV micro-F1", sel_1se),
    ]
    base_row = {"candidate": baseline["name"], "description": baseline["description"],
                "micro_f1": stats([f["outer_micro_f1"] for f in baseline["folds"]]),
                "macro_f1": stats([f["outer_macro_f1"] for f in baseline["folds"]]),
                "command": meta["command_all"], "machine": MACHINE, "wall_s": 0.0}
    # The default-choosing rule on the outer table: simplest candidate within one SE of the best outer mean.
    best = max(rows, key=lambda r: r["micro_f1"]["mean"])
    ok = [r for r in rows if r["micro_f1"]["mean"] >= best["micro_f1"]["mean"] - best["micro_f1"]["se"]]
    chosen = min(ok, key=lambda r: r["complexity_rank"])
    m, sd = chosen["micro_f1"]["mean"], chosen["micro_f1"]["sd"]
    se = chosen["micro_f1"]["se"]
    sel = selection[0]["micro_f1"]
    rule = {
        "rule": "Among the candidates (each scored alone under the same outer protocol), take the best outer mean "
                "micro-F1; the default is the simplest candidate (lowest complexity_rank) whose outer mean "
                "micro-F1 is within one standard error (sd / sqrt(15) over the outer folds) of that best mean.",
        "complexity_order": [n for n in sorted(names, key=lambda n: partials[n]["complexity"])],
        "best_outer": best["candidate"], "best_outer_mean": best["micro_f1"]["mean"],
        "within_one_se": [r["candidate"] for r in ok], "chosen": chosen["candidate"],
        "expected_micro_f1": {
            "mean": m, "sd": sd,
            "interval_95": [round(m - 1.96 * sd, 4), round(m + 1.96 * sd, 4)],
            "interval_95_of_mean": [round(m - 1.96 * se, 4), round(m + 1.96 * se, 4)],
            "note": "mean and sd of the chosen configuration over 15 outer folds (150 memes each); interval_95 = "
                    "mean +- 1.96 sd is the range for one ~150-meme sample, interval_95_of_mean = mean +- 1.96 sd/"
                    "sqrt(15) (folds overlap across seeds, so this one is optimistic). The chosen configuration is "
                    "picked after seeing the outer table; select_inside_argmax is the procedure's honest figure.",
        },
        "expected_macro_f1": {"mean": chosen["macro_f1"]["mean"], "sd": chosen["macro_f1"]["sd"]},
        "selection_inside_the_loop": {"micro_f1_mean": sel["mean"], "micro_f1_sd": sel["sd"],
                                      "interval_95": [round(sel["mean"] - 1.96 * sel["sd"], 4),
                                                      round(sel["mean"] + 1.96 * sel["sd"], 4)]},
    }
    return {
        "study": "technique nested CV (issue 25 items 3-4)",
        "data": "SemEval-2021 Task 6 train+dev (750 memes); the official test split is never read",
        "protocol": {"outer": f"{OUTER_FOLDS}-fold shuffled KFold x seeds {list(OUTER_SEEDS)} (15 outer folds)",
                     "inner": f"{INNER_FOLDS}-fold shuffled KFold on the outer-training part (random_state "
                              "1000 + 10*seed + fold); thresholds = models.thresholds.tune_thresholds(inner OOF, "
                              "'micro'); the outer fold scores the candidate refitted on the whole outer-training "
                              "part at those thresholds",
                     "metric": "sklearn f1_score micro/macro, zero_division=1 (models.metrics.summary)",
                     "sd": "sample sd (ddof=1) over the 15 outer folds; se = sd/sqrt(15)"},
        "machine": MACHINE, **meta,
        "rows": rows, "selection_inside": selection, "baseline": base_row, "selection_rule": rule,
    }


def fmt(s: dict) -> str:
    return f"{s['mean']:.3f} ± {s['sd']:.3f}"


def write_markdown(res: dict) -> None:
    r = res["selection_rule"]
    lines = [
        "# Technique head: nested cross-validation (issue 25, items 3 and 4)",
        "",
        f"Data: {res['data']}. Machine: {res['machine']}. Produced by "
        + "; ".join(f"`{c}`" for c in res.get("commands", [res["command_all"]]))
        + " (the plain command without `--only` runs everything in one process; results: "
        "`bench/results/technique_nested_cv.json`, per-fold values there).",
        "",
        f"Protocol: outer {res['protocol']['outer']}; inner {res['protocol']['inner']}. Metric: "
        f"{res['protocol']['metric']}. Figures are mean ± sd over the 15 outer folds.",
        "",
        "| candidate | outer micro-F1 | outer macro-F1 | inner micro-F1 (mean) | wall s |",
        "| --- | --- | --- | --- | ---: |",
    ]
    for row in res["rows"]:
        lines.append(f"| {row['candidate']} | {fmt(row['micro_f1'])} | {fmt(row['macro_f1'])} | "
                     f"{row['inner_micro_f1_mean']:.3f} | {row['wall_s']:.0f} |")
    for row in res["selection_inside"]:
        counts = ", ".join(f"{k} ×{v}" for k, v in row["chosen_counts"].items())
        lines.append(f"| **{row['candidate']}** (chose: {counts}) | {fmt(row['micro_f1'])} | "
                     f"{fmt(row['macro_f1'])} | — | — |")
    b = res["baseline"]
    lines.append(f"| {b['candidate']} (baseline) | {fmt(b['micro_f1'])} | {fmt(b['macro_f1'])} | — | 0 |")
    if any("paired_vs_default" in row for row in res["rows"]):
        lines += ["", "Paired against `default` (same 15 outer folds): mean difference ± se, folds better/worse.", "",
                  "| candidate | Δ micro-F1 | better/worse | Δ macro-F1 | better/worse |", "| --- | --- | --- | --- | --- |"]
        for row in res["rows"]:
            p = row.get("paired_vs_default")
            if p and row["candidate"] != "default":
                mi, ma = p["micro_f1"], p["macro_f1"]
                lines.append(f"| {row['candidate']} | {mi['mean_diff']:+.4f} ± {mi['se']:.4f} | "
                             f"{mi['folds_better']}/{mi['folds_worse']} | {ma['mean_diff']:+.4f} ± {ma['se']:.4f} | "
                             f"{ma['folds_better']}/{ma['folds_worse']} |")
    lines += ["", "Candidates:", ""]
    for row in res["rows"]:
        lines.append(f"- `{row['candidate']}` (complexity rank {row['complexity_rank']}): {row['description']}.")
    lines += ["", "## Selection rule and outcome", "", r["rule"], "",
              f"Complexity order (simplest first): {', '.join(r['complexity_order'])}.", "",
              f"Best outer mean: `{r['best_outer']}` ({r['best_outer_mean']:.3f}); within one SE of it: "
              f"{', '.join('`' + n + '`' for n in r['within_one_se'])}. **Chosen: `{r['chosen']}`.**", "",
              f"- `expected_micro_f1` (chosen, outer folds): {r['expected_micro_f1']['mean']:.3f} ± "
              f"{r['expected_micro_f1']['sd']:.3f}, 95% interval {r['expected_micro_f1']['interval_95']} "
              f"(one ~150-meme sample; of the mean: {r['expected_micro_f1']['interval_95_of_mean']}); macro-F1 "
              f"{r['expected_macro_f1']['mean']:.3f} ± {r['expected_macro_f1']['sd']:.3f}.",
              f"- Selection inside the loop (argmax of inner micro-F1 in every outer fold; the honest estimate of "
              f"the whole choose-then-fit procedure): {r['selection_inside_the_loop']['micro_f1_mean']:.3f} ± "
              f"{r['selection_inside_the_loop']['micro_f1_sd']:.3f}, 95% interval "
              f"{r['selection_inside_the_loop']['interval_95']}.",
              ""]
    d = res.get("determinism")
    if d:
        lines += ["## Seed ensembles", "",
                  "Not run: the head is a linear model fitted by full-batch L-BFGS on a convex, L2-penalised loss "
                  "with dropout off, so different seeds converge to the same optimum. Measured on outer fold "
                  f"(seed 0, fold 0; {d['n_test']} memes): same seed twice, max |Δp| = "
                  f"{d['same_seed_max_abs_prob_diff']:.2g}; seed 0 vs seed 1, max |Δp| = "
                  f"{d['seed0_vs_seed1_max_abs_prob_diff']:.2g} ({d['seed0_vs_seed1_decisions_differ_at_0.5']} "
                  "decisions differ at 0.5). An ensemble of seeds would average near-identical heads.", ""]
    notes = res.get("notes")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    MARKDOWN.write_text("\n".join(lines), encoding="utf-8")


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="run only these candidates (partials are stored, then aggregated)")
    ap.add_argument("--report-only", action="store_true", help="aggregate stored partials, run nothing")
    ap.add_argument("--features-only", action="store_true", help="compute/cache features and exit")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seed_private_cache()
    PARTIAL_DIR.mkdir(parents=True, exist_ok=True)
    names = args.only if args.only else ALL_NAMES
    unknown = set(names) - set(ALL_NAMES)
    if unknown:
        sys.exit(f"unknown candidate(s) {sorted(unknown)}; choose from {ALL_NAMES}")
    command = "nice -n 10 .venv/bin/python -m research.technique_nested_cv" + (
        f" --only {' '.join(args.only)}" if args.only else "")
    if not args.report_only:
        t0 = time.time()
        data, cfgs = load_data("minilm_efficientnet" in names or args.features_only,
                               any(n.startswith("ptc") for n in names) or args.features_only,
                               "default_harm4" in names or args.features_only)
        feat_s = round(time.time() - t0, 1)
        if args.features_only:
            return
        if "default" in names:
            det = determinism_check(data, cfgs)
            (PARTIAL_DIR / "determinism.json").write_text(json.dumps(det))
            (PARTIAL_DIR / "baseline.json").write_text(json.dumps(constant_baseline(data.y)))
        for c in make_candidates(data, cfgs, names):
            res = run_candidate(c, data)
            res["command"] = command
            res["feature_load_s"] = feat_s
            (PARTIAL_DIR / f"{c.name}.json").write_text(json.dumps(res))
    partials = {p.stem: json.loads(p.read_text()) for p in PARTIAL_DIR.glob("*.json")
                if p.stem in ALL_NAMES}
    if not partials or not (PARTIAL_DIR / "baseline.json").exists():
        log("nothing to aggregate yet (run the 'default' candidate for the baseline)")
        return
    meta = {"command_all": "nice -n 10 .venv/bin/python -m research.technique_nested_cv",
            "python": platform.python_version(), "torch": torch.__version__,
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    runs = sorted({p["command"] for p in partials.values()})
    meta["commands"] = [*runs, "nice -n 10 .venv/bin/python -m research.technique_nested_cv --report-only"]
    if len(runs) > 1:  # candidates were run in separate --only processes, then aggregated
        meta["command_all"] = "; ".join(meta["commands"])
    res = aggregate(partials, json.loads((PARTIAL_DIR / "baseline.json").read_text()), meta)
    det = PARTIAL_DIR / "determinism.json"
    if det.exists():
        res["determinism"] = json.loads(det.read_text())
    notes_file = REPO / "research" / "technique_nested_cv_notes.json"
    if notes_file.exists():
        res["notes"] = json.loads(notes_file.read_text())
    RESULTS.write_text(json.dumps(res, indent=1), encoding="utf-8")
    write_markdown(res)
    log(f"wrote {RESULTS.relative_to(REPO)} and {MARKDOWN.relative_to(REPO)}")
    for row in res["rows"] + res["selection_inside"] + [res["baseline"]]:
        log(f"{row['candidate']:24s} micro {fmt(row['micro_f1'])}  macro {fmt(row['macro_f1'])}")


if __name__ == "__main__":
    main()
