"""Fit the harm head on HarMeme train+val: grouped CV figures per domain, out-of-fold scores, the final head,
its declared outputs and the decision policy fitted on the out-of-fold scores.

Folds are stratified by severity and domain and grouped by normalised text (a repeated OCR text never sits on
both sides of a fold). Nothing here reads a HarMeme test split: they are held out for evaluation.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from models.config import HarmHeadConfig
from models.encoders.base import TextEncoder
from models.feature_cache import text_features
from models.harm import HarmConfig, HarmHead, HarmInputs, fit_harm_head, predict_harm, targets, token_presence
from models.harm_data import DOMAINS, POOL_FILES, SEVERITIES, HarmMeme, load_pool, text_groups
from models.preprocess import TextTokenizer
from schemas.policy import DecisionPolicy, PolicyFit
from scoring.harm import (
    block_cutoff_for_precision,
    harm_figures,
    operating_point,
    review_cutoff_for_recall,
)

HARM_OUT, SEVERITY_OUT = "harmful_prob", "severity_probs"  # = exporters.contract names
TRAINED_ON = f"HarMeme {' + '.join(POOL_FILES)} (text only)"


def trained_on(cfg: HarmHeadConfig) -> str:
    return TRAINED_ON + "".join(f" + moderator decisions in {Path(p).parent.name or p}" for p in cfg.extra)


def harm_inputs(encoder: TextEncoder, memes: list[HarmMeme]) -> HarmInputs:
    """Pooled features (cached on disk like every frozen feature) and token presence, tokenised as serving does."""
    features = text_features(encoder, memes)  # type: ignore[arg-type]  # only `.text` is read
    tok = TextTokenizer(encoder.tokenizer_file, encoder.text_spec)
    parts = []
    for start in range(0, len(memes), 512):
        ids, mask = tok([m.text for m in memes[start:start + 512]])
        parts.append(token_presence(ids.numpy(), mask.numpy(), tok.vocab_size))
    from scipy import sparse

    return HarmInputs(features, sparse.vstack(parts).tocsr())


def grouped_folds(memes: list[HarmMeme], folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    sev, _ = targets(memes)
    domains = sorted({m.domain for m in memes})
    strata = sev * len(domains) + np.asarray([domains.index(m.domain) for m in memes])
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(memes)), strata, text_groups(memes)))


@dataclass
class HarmCV:
    p_harm: np.ndarray  # out-of-fold P(harmful)
    severity_probs: np.ndarray  # out-of-fold [N, 3]
    metrics: dict[str, float]  # harm_cv_{domain}_{figure}, plus the fold sd of each AUROC


def cross_validate_harm(inputs: HarmInputs, memes: list[HarmMeme], cfg: HarmConfig, folds: int = 5,
                        seed: int = 0) -> HarmCV:
    sev, harmful = targets(memes)
    p = np.zeros(len(memes))
    sp = np.zeros((len(memes), len(SEVERITIES)))
    fold_auroc: dict[str, list[float]] = {d: [] for d in DOMAINS}
    domain = np.asarray([m.domain for m in memes])
    for tr, te in grouped_folds(memes, folds, seed):
        head = fit_harm_head(inputs.subset(tr), sev[tr], cfg)
        p[te], sp[te] = predict_harm(head, inputs.subset(te))
        for d in DOMAINS:
            rows = te[domain[te] == d]
            fold_auroc[d].append(harm_figures(harmful[rows], p[rows])["auroc"])
    metrics: dict[str, float] = {}
    for d in DOMAINS:
        rows = domain == d
        figs = harm_figures(harmful[rows], p[rows], sev[rows], sp[rows])
        metrics |= {f"harm_cv_{d}_{k}": v for k, v in figs.items()}
        metrics[f"harm_cv_{d}_auroc_fold_sd"] = float(np.std(fold_auroc[d], ddof=1))
    metrics |= {f"harm_cv_all_{k}": v for k, v in harm_figures(harmful, p, sev, sp).items()}
    return HarmCV(p, sp, metrics)


def default_policy(cv: HarmCV, memes: list[HarmMeme], cfg: HarmHeadConfig, name: str) -> DecisionPolicy:
    """Review from the harm score at the cut-off that catches `min_harmful_caught` of the harmful memes out of
    fold; block where P(harmful) or P(very harmful) reaches `block_precision` at the feed's base rate.
    Techniques alone do not send a meme to review (their flags stay in the verdict for moderators)."""
    _, harmful = targets(memes)
    review = review_cutoff_for_recall(harmful, cv.p_harm, cfg.min_harmful_caught)
    harm_block = max(block_cutoff_for_precision(harmful, cv.p_harm, cfg.base_rate, cfg.block_precision), review)
    very = cv.severity_probs[:, -1]
    severity_block = block_cutoff_for_precision(harmful, very, cfg.base_rate, cfg.block_precision)
    flag = cv.p_harm >= review
    block = (cv.p_harm >= harm_block) | (very >= severity_block)
    point = operating_point(harmful, flag | block, block, cfg.base_rate)
    fit = PolicyFit(
        data=f"{trained_on(cfg)}: {cfg.folds}-fold grouped out-of-fold harm scores ({len(memes)} memes)",
        target={"harmful_caught": cfg.min_harmful_caught, "block_precision": cfg.block_precision},
        target_met=point.harmful_caught >= cfg.min_harmful_caught,
        base_rate=cfg.base_rate, figures=point.as_dict(),
    )
    return DecisionPolicy(
        id=f"{name}-harm-v1", harm_review=review, harm_block=harm_block, severity_block=severity_block,
        review_min_flags=0, fit=fit,
    )


def train_harm(encoder: TextEncoder, cfg: HarmHeadConfig, name: str, seed: int = 0, limit: int | None = None
               ) -> tuple[HarmHead, dict[str, float], list[dict[str, Any]], DecisionPolicy]:
    """(final head, CV metrics, declared outputs, fitted policy); `limit`: a smoke run's few memes per severity."""
    memes = load_pool(tuple(Path(p) for p in cfg.extra), limit)
    inputs = harm_inputs(encoder, memes)
    head_cfg = HarmConfig(c_features=cfg.c_features, c_tokens=cfg.c_tokens)
    cv = cross_validate_harm(inputs, memes, head_cfg, cfg.folds, seed)
    sev, _ = targets(memes)
    head = fit_harm_head(inputs, sev, head_cfg)
    summary = {k: round(v, 4) for k, v in cv.metrics.items() if k.endswith(("auroc", "accuracy", "macro_f1"))}
    outputs = [
        {"name": HARM_OUT, "role": "harm", "kind": "binary", "labels": ["harmful"], "thresholds": [0.5],
         "trained_on": trained_on(cfg), "metrics": summary},
        {"name": SEVERITY_OUT, "role": "severity", "kind": "categorical", "labels": list(SEVERITIES),
         "trained_on": trained_on(cfg)},
    ]
    return head, cv.metrics, outputs, default_policy(cv, memes, cfg, name)
