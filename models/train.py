"""`train`: features (cached mode) or tensors (finetune mode) → CV thresholds → dev figure → final fit → run folder."""

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.assemble import build_model, specs
from models.config import RunConfig
from models.data import Meme, harmful_targets, load_dataset, multi_hot
from models.errors import ConfigError
from models.expected import expected_figures
from models.harm_train import train_harm
from models.metrics import binarize, summary, top_k_constant
from models.protocol import cross_validate
from models.run_dir import save_run, save_training_pool
from models.sources import FeatureSource, TensorSource
from models.thresholds import tune_thresholds
from schemas.techniques import TECHNIQUES


def _load_pool(cfg: RunConfig, limit: int | None) -> tuple[list[Meme], np.ndarray, np.ndarray]:
    """Pool memes plus the pool indices of the train split and of the dev split (empty if not in the pool)."""
    memes: list[Meme] = []
    train_idx: list[int] = []
    dev_idx: list[int] = []
    for name in cfg.data.pool:
        part = load_dataset(name)
        if limit:
            part = part[:limit]
        positions = list(range(len(memes), len(memes) + len(part)))
        if name == cfg.data.train:
            train_idx += positions
        if name == cfg.data.dev:
            dev_idx += positions
        memes += part
    return memes, np.asarray(train_idx, dtype=np.int64), np.asarray(dev_idx, dtype=np.int64)


def train(cfg: RunConfig, out_root: Path, epochs: int | None = None, limit: int | None = None) -> Path:
    started = time.perf_counter()
    torch.set_num_threads(max(cfg.training.threads, 1))
    if epochs is not None:
        cfg = replace(cfg, training=replace(cfg.training, epochs=epochs))
    memes, train_idx, dev_idx = _load_pool(cfg, limit)
    y = multi_hot(memes)
    harmful = harmful_targets(memes)
    n_labels, n_out = y.shape[1], y.shape[1] + int(harmful is not None)
    model = build_model(cfg, n_labels, harmful is not None, [m.text for m in memes])
    source = (FeatureSource if cfg.training.mode == "cached" else TensorSource)(cfg, model, memes, y, harmful)
    t_features = time.perf_counter() - started
    objective = cfg.evaluation.threshold_objective
    metrics: dict[str, float] = {}
    run_id = f"{cfg.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    info: dict[str, Any] = {"run_id": run_id, "config": cfg.name, "pool": cfg.data.pool, "n_pool": len(memes)}

    folds = min(cfg.evaluation.folds, len(memes))
    if folds >= 2:
        cv = cross_validate(source.fit_predict, y, n_out, folds, cfg.evaluation.seed, objective)
        thresholds = cv.thresholds
        metrics |= {f"cv_{k}": v for k, v in cv.cross_fitted.items()}
        metrics |= {f"cv_{k}_oof_thresholds": v for k, v in cv.in_sample.items() if k.endswith("f1")}
        base = np.zeros_like(y, dtype=np.int64)
        for te in cv.folds:
            base[te] = top_k_constant(y[np.setdiff1d(np.arange(len(y)), te)], len(te))
        metrics["cv_baseline_top3_micro_f1"] = summary(y, base)["micro_f1"]
        metrics["cv_baseline_top3_macro_f1"] = summary(y, base)["macro_f1"]
        info["cv_protocol"] = (
            f"{folds}-fold CV (shuffled, seed {cfg.evaluation.seed}) over {'+'.join(cfg.data.pool)}; each fold "
            "scored with per-label thresholds tuned on the other folds' out-of-fold probabilities"
        )
    else:
        thresholds = None

    if len(dev_idx) and len(train_idx):
        dev_probs = source.fit_predict(train_idx, dev_idx)[:, :n_labels]
        if folds >= 2:
            th_dev = tune_thresholds(cv.oof[train_idx, :n_labels], y[train_idx], objective)
        else:
            th_dev = source.validation_thresholds(objective, train_idx)
        metrics |= {f"dev_{k}": v for k, v in summary(y[dev_idx], binarize(dev_probs, th_dev)).items()}
        base = top_k_constant(y[train_idx], len(dev_idx))
        metrics["dev_baseline_top3_micro_f1"] = summary(y[dev_idx], base)["micro_f1"]
        metrics["dev_baseline_top3_macro_f1"] = summary(y[dev_idx], base)["macro_f1"]
        info["dev_protocol"] = f"fit on {cfg.data.train} only, scored on {cfg.data.dev}; thresholds tuned on " + (
            f"the out-of-fold probabilities of the {cfg.data.train} memes"
            if folds >= 2
            else f"a 15% validation split of {cfg.data.train}"
        )

    final = source.fit_final(np.arange(len(memes)))
    checkpoint = source.checkpoint(final)
    if cfg.harm_head.enabled:
        if final.text_encoder is None:
            raise ConfigError(f"{cfg.name}: harm_head needs a text encoder (HarMeme is text only).")
        harm, harm_metrics, info["harm_outputs"], policy = train_harm(final.text_encoder, cfg.harm_head, cfg.name,
                                                                   limit=limit)
        final.attach_harm_head(harm)
        checkpoint["harm_head"] = harm.state_dict()
        metrics |= harm_metrics
        info["policy"] = policy.model_dump(mode="json")
    expected = expected_figures(cfg.name)
    if expected:
        info["expected"] = expected
    if thresholds is None:
        thresholds = source.validation_thresholds(objective, np.arange(len(memes)))
    info["thresholds_protocol"] = (
        "tuned on out-of-fold probabilities over the pool" if folds >= 2 else ("tuned on the internal validation split")
    )
    elapsed = time.perf_counter() - started
    metrics["train_seconds"] = elapsed
    metrics["feature_seconds"] = t_features
    info["seconds"] = round(elapsed, 1)
    image_spec, text_spec, tok, unused = specs(final)
    run_dir = out_root / cfg.name
    save_run(
        run_dir,
        cfg,
        list(TECHNIQUES),
        thresholds,
        metrics,
        checkpoint,
        image_spec,
        text_spec,
        tok,
        unused,
        info,
        harmful_threshold=0.5 if harmful is not None else None,
    )
    save_training_pool(run_dir, cfg.data.pool, memes)
    return run_dir
