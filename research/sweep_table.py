"""What the sweeps share: the comparison table (every row scored the same way, from out-of-fold probabilities
with per-label thresholds tuned on the other folds, as `protocol.cross_validate`, and compared fold by fold
with the default's row of the same run), the machine facts recorded with a run, and the result-file writer."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from models.metrics import binarize, summary
from models.protocol import cross_validate
from models.thresholds import tune_thresholds

Fitter = Callable[[np.ndarray, np.ndarray], np.ndarray]


def machine() -> dict[str, str]:
    model = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if ln.startswith("Model name")), "")
    return {"cpu": model, "cores": str(os.cpu_count()), "python": platform.python_version()}


def load_avg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def write_sweep(out: Path, doc: dict, merge: bool, key: str) -> None:
    """Write a sweep's result file; with `merge` a partial run replaces only its own rows (same `key`) of the
    file already there."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if merge and out.is_file():
        names = {r[key] for r in doc["results"]}
        doc = {**doc, "results": [r for r in json.loads(out.read_text())["results"] if r[key] not in names]
               + doc["results"]}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")


class SweepTable:
    def __init__(self, y: np.ndarray, folds: int, seed: int, default: str, only: str | None = None) -> None:
        self.y, self.folds, self.seed, self.default, self.only = y, folds, seed, default, only
        self.rows: list[dict] = []
        self.oofs: dict[str, np.ndarray] = {}
        self._fold_scores: dict[str, np.ndarray] = {}
        self._splits: list[np.ndarray] = []

    def wanted(self, name: str) -> bool:
        return not self.only or self.only in name or name == self.default

    def run(self, name: str, fit: Fitter, command: str, extra: dict | None = None) -> None:
        if not self.wanted(name):
            return
        started = time.perf_counter()
        r = cross_validate(fit, self.y, self.y.shape[1], self.folds, self.seed, "micro")
        self.oofs[name] = r.oof
        self._splits = list(r.folds)
        self.record(name, r.oof, started, command, extra)

    def ensemble(self, name: str, command: str, *members: str) -> None:
        """A probability average of rows already run (skipped when one of them was not)."""
        if (self.only and self.only not in name) or any(m not in self.oofs for m in members):
            return
        oof = sum(self.oofs[m] for m in members) / len(members)
        self.record(name, oof, time.perf_counter(), command + "  (probability average of the named rows' OOF "
                    "probabilities)", {"members": list(members)})

    def record(self, name: str, oof: np.ndarray, started: float, command: str, extra: dict | None = None) -> None:
        y = self.y
        pred = np.zeros_like(y, dtype=np.int64)
        per_fold = []
        for te in self._splits:
            rest = np.setdiff1d(np.arange(len(y)), te)
            pred[te] = binarize(oof[te], tune_thresholds(oof[rest], y[rest], "micro"))
            s = summary(y[te], pred[te])
            per_fold.append((s["micro_f1"], s["macro_f1"]))
        r = summary(y, pred)
        pf = np.array(per_fold)
        self._fold_scores[name] = pf
        row = {"config": name, "cv_micro_f1": round(r["micro_f1"], 4), "cv_macro_f1": round(r["macro_f1"], 4),
               "fold_micro_f1": [round(v, 4) for v in pf[:, 0]], "fold_micro_f1_std": round(float(pf[:, 0].std()), 4),
               "fold_macro_f1_std": round(float(pf[:, 1].std()), 4),
               "split": f"{self.folds}-fold CV seed {self.seed} over train+dev ({len(y)} memes)",
               "command": command, "wall_seconds": round(time.perf_counter() - started, 1), "load_avg": load_avg()}
        base = self._fold_scores.get(self.default)
        if name != self.default and base is not None:
            d, dm = pf[:, 0] - base[:, 0], pf[:, 1] - base[:, 1]
            row["vs_default_fold_micro_diff"] = [round(float(v), 4) for v in d]
            row["vs_default_fold_micro_diff_mean"] = round(float(d.mean()), 4)
            row["vs_default_fold_micro_diff_std"] = round(float(d.std(ddof=1)), 4)
            row["vs_default_fold_macro_diff_mean"] = round(float(dm.mean()), 4)
            row["vs_default_folds_better"] = int((d > 0).sum())
        row.update(extra or {})
        self.rows.append(row)
        print(json.dumps(row), flush=True)
