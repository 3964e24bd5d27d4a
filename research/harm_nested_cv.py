"""Nested, grouped cross-validation of the harm head's configuration on HarMeme train+val (text only).

`python -m research.harm_nested_cv [--seeds 0 1]` writes bench/results/harm_nested_cv.json.

Outer: 5 folds stratified by severity x domain and grouped by normalised text (models/harm_train.grouped_folds).
Inner: 3 such folds on each outer-training part choose the view and the two L2 strengths by pooled inner AUROC;
the choice is refitted on the whole outer-training part and scored on the outer fold it never saw. Every fixed
candidate is also scored under the same outer folds (its row is what it would score if chosen blindly; the
"selected inside" row is the honest estimate of the whole procedure). The HarMeme test splits are never read.
No text is printed (HarMeme's OCR texts contain slurs).
"""

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from models.config import load_config
from models.encoders.registry import build_text_encoder
from models.harm import HarmInputs, idf, targets, tfidf_rows
from models.harm_data import DOMAINS, load_pool, text_groups
from models.harm_train import grouped_folds, harm_inputs
from models.paths import REPO_ROOT
from scoring.harm import harm_figures

C_FEATURES = (0.0002, 0.0005, 0.002)
C_TOKENS = (0.3, 1.0, 3.0)
OUT = REPO_ROOT / "bench" / "results" / "harm_nested_cv.json"


def candidates() -> list[tuple[str, float | None, float | None]]:
    return ([("features", c, None) for c in C_FEATURES] + [("tokens", None, c) for c in C_TOKENS]
            + [("both", a, b) for a, b in itertools.product(C_FEATURES, C_TOKENS)])


class Views:
    """Per-view binary logits for one (train, test) split, cached by L2 strength (each fit is reused)."""

    def __init__(self, inputs: HarmInputs, harmful: np.ndarray, tr: np.ndarray, te: np.ndarray) -> None:
        x = inputs.features
        mean, std = x[tr].mean(0), np.clip(x[tr].std(0), 1e-3, None)
        self.z_tr, self.z_te = (x[tr] - mean) / std, (x[te] - mean) / std
        w = idf(inputs.presence[tr])
        self.b_tr, self.b_te = tfidf_rows(inputs.presence[tr], w), tfidf_rows(inputs.presence[te], w)
        self.y = harmful[tr]
        self._cache: dict[tuple[str, float], np.ndarray] = {}

    def logit(self, view: str, c: float) -> np.ndarray:
        if (view, c) not in self._cache:
            x_tr, x_te = (self.z_tr, self.z_te) if view == "features" else (self.b_tr, self.b_te)
            self._cache[(view, c)] = LogisticRegression(C=c, max_iter=3000).fit(x_tr, self.y).decision_function(x_te)
        return self._cache[(view, c)]

    def score(self, cand: tuple[str, float | None, float | None]) -> np.ndarray:
        view, cf, ct = cand
        if view == "features":
            return expit(self.logit("features", cf))
        if view == "tokens":
            return expit(self.logit("tokens", ct))
        return expit((self.logit("features", cf) + self.logit("tokens", ct)) / 2)  # = models.harm.HarmHead


def fold_figures(harmful: np.ndarray, domain: np.ndarray, te: np.ndarray, p: np.ndarray) -> dict[str, float]:
    out = {}
    for d in [*DOMAINS, "all"]:
        rows = np.ones(len(te), bool) if d == "all" else domain[te] == d
        f = harm_figures(harmful[te][rows], p[rows])
        out |= {f"{d}_{k}": f[k] for k in ("auroc", "accuracy", "macro_f1")}
    return out


def summarise(per_fold: list[dict[str, float]]) -> dict[str, dict[str, float | list[float]]]:
    keys = per_fold[0].keys()
    return {k: {"mean": round(float(np.mean([f[k] for f in per_fold])), 4),
                "sd": round(float(np.std([f[k] for f in per_fold], ddof=1)), 4),
                "folds": [round(f[k], 4) for f in per_fold]} for k in keys}


def run(seeds: list[int]) -> dict:
    started = time.time()
    torch.set_num_threads(1)
    cfg = load_config(REPO_ROOT / "configs" / "default.yaml")
    memes = load_pool()
    inputs = harm_inputs(build_text_encoder(cfg.text_encoder), memes)
    _, harmful = targets(memes)
    domain = np.asarray([m.domain for m in memes])
    cands = candidates()
    fixed: dict[str, list[dict[str, float]]] = {str(c): [] for c in cands}
    selected: list[dict[str, float]] = []
    chosen: list[str] = []
    for seed in seeds:
        for k, (tr, te) in enumerate(grouped_folds(memes, 5, seed)):
            inner_memes = [memes[i] for i in tr]
            sev_tr, _ = targets(inner_memes)
            strata = sev_tr * 2 + (domain[tr] == "harm_p")
            inner = StratifiedGroupKFold(3, shuffle=True, random_state=seed).split(
                tr, strata, text_groups(inner_memes))
            inner_p = {str(c): np.zeros(len(tr)) for c in cands}
            for itr, ite in inner:
                views = Views(inputs.subset(tr), harmful[tr], itr, ite)
                for c in cands:
                    inner_p[str(c)][ite] = views.score(c)
            best = max(cands, key=lambda c: roc_auc_score(harmful[tr], inner_p[str(c)]))
            outer = Views(inputs, harmful, tr, te)
            for c in cands:
                fixed[str(c)].append(fold_figures(harmful, domain, te, outer.score(c)))
            selected.append(fold_figures(harmful, domain, te, outer.score(best)))
            chosen.append(str(best))
            print(f"seed {seed} fold {k}: inner choice {best}, outer AUROC "
                  f"{selected[-1]['all_auroc']:.3f} ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
    return {
        "command": "python -m research.harm_nested_cv --seeds " + " ".join(map(str, seeds)),
        "data": "HarMeme harm_c/harm_p train+val (6,304 memes with a severity), text only; test splits never read",
        "protocol": "outer 5-fold x seeds, stratified by severity x domain, grouped by normalised text; inner "
                    "3-fold (same rules) on the outer-training part chooses the candidate by pooled AUROC; "
                    "accuracy and macro-F1 at P(harmful) >= 0.5",
        "machine": f"2-core shared CPU ({platform.processor() or platform.machine()}), torch threads 1",
        "wall_seconds": round(time.time() - started, 1),
        "selected_inside": summarise(selected),
        "inner_choices": chosen,
        "candidates": {c: summarise(rows) for c, rows in fixed.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.harm_nested_cv", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    result = run(args.seeds)
    args.out.write_text(json.dumps(result, indent=1))
    s = result["selected_inside"]
    print(f"selected inside: AUROC Harm-C {s['harm_c_auroc']['mean']:.3f} ± {s['harm_c_auroc']['sd']:.3f}, "
          f"Harm-P {s['harm_p_auroc']['mean']:.3f} ± {s['harm_p_auroc']['sd']:.3f} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
