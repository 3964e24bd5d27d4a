"""Parity: the exported graph in ONNX Runtime against PyTorch eager, on the same preprocessed real memes.

Both sides get exactly the numpy arrays the serving preprocessing (`consumer/core/preprocess.py`) produces,
so the check isolates the graph; preprocessing parity with training is pinned by the models' tests.
"""

from typing import Any

import numpy as np
from tqdm import tqdm

from consumer.core.runtime import BundleRuntime
from consumer.evaluate.run import micro_f1, multi_hot
from exporters.contract import ExportableModel, torch_outputs
from exporters.memes import Meme
from schemas.manifest import PrecisionParity

# fp32 must be the same computation; fp16/int8 only have to keep the decisions.
MAX_ABS_DIFF = {"fp32": 1e-4}
MIN_FLAG_AGREEMENT = {"fp32": 1.0, "fp16": 0.99, "int8": 0.97}


def check_parity(
    model: ExportableModel, runtime: BundleRuntime, memes: list[Meme], precision: str, split: str,
    batch_size: int = 16, progress: bool = True,
) -> tuple[PrecisionParity, dict[str, Any]]:
    """Summary for the manifest and per-meme details for parity.json. Does not raise: the caller decides."""
    torch_probs, onnx_probs, harm_diffs = [], [], []
    for start in tqdm(range(0, len(memes), batch_size), desc=f"parity {precision}", unit="batch",
                      disable=not progress):
        batch = memes[start:start + batch_size]
        feeds = runtime.feeds([m.image for m in batch], [m.text for m in batch])
        ref, ref_harm = torch_outputs(model, {k: v.astype(np.float32) if v.dtype == np.float16 else v
                                              for k, v in feeds.items()})
        got = runtime.run_feeds(feeds)
        torch_probs.append(ref)
        onnx_probs.append(got.technique_probs)
        if ref_harm is not None and got.harmful_probs is not None:
            harm_diffs.append(np.abs(ref_harm - got.harmful_probs))
    ref_all, got_all = np.concatenate(torch_probs), np.concatenate(onnx_probs)
    diff = np.abs(ref_all - got_all)
    harm_max = float(np.concatenate(harm_diffs).max()) if harm_diffs else 0.0
    max_diff = max(float(diff.max()), harm_max)
    thresholds = np.asarray(model.thresholds, dtype=np.float32)
    ref_flags, got_flags = ref_all >= thresholds, got_all >= thresholds
    agreement = float((ref_flags == got_flags).mean())

    f1_torch = f1_onnx = None
    labelled = [i for i, m in enumerate(memes) if m.labels is not None]
    if labelled:
        gold = multi_hot([memes[i].labels or [] for i in labelled], model.labels)
        f1_torch, f1_onnx = micro_f1(gold, ref_flags[labelled]), micro_f1(gold, got_flags[labelled])

    limit = MAX_ABS_DIFF.get(precision)
    min_agree = MIN_FLAG_AGREEMENT[precision]
    passed = agreement >= min_agree and (limit is None or max_diff <= limit)
    summary = PrecisionParity(
        split=split, n_memes=len(memes), max_abs_diff=max_diff, mean_abs_diff=float(diff.mean()),
        flag_agreement=agreement, micro_f1_torch=f1_torch, micro_f1_onnx=f1_onnx,
        micro_f1_change=None if f1_torch is None or f1_onnx is None else f1_onnx - f1_torch,
        max_abs_diff_limit=limit, min_flag_agreement=min_agree, passed=passed,
    )
    disagreeing = np.argwhere(ref_flags != got_flags)
    details = {
        "precision": precision, "provider": runtime.provider, "summary": summary.model_dump(mode="json"),
        "harmful_max_abs_diff": harm_max if harm_diffs else None,
        "per_meme_max_abs_diff": {m.id: float(d) for m, d in zip(memes, diff.max(1), strict=True)},
        "flag_disagreements": [
            {"id": memes[i].id, "technique": model.labels[k], "torch": float(ref_all[i, k]),
             "onnx": float(got_all[i, k]), "threshold": float(thresholds[k])}
            for i, k in disagreeing
        ],
    }
    return summary, details
