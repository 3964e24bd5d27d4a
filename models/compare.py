"""`python -m models.compare [RUNS_DIR]`: the markdown comparison table of every trained run's metrics.json."""

import json
import sys
from pathlib import Path

from models.paths import REPO_ROOT

COLUMNS = [
    ("cv_micro_f1", "CV micro-F1"),
    ("cv_macro_f1", "CV macro-F1"),
    ("cv_micro_f1_oof_thresholds", "CV micro-F1 (thresholds tuned in-sample)"),
    ("dev_micro_f1", "dev micro-F1"),
    ("dev_macro_f1", "dev macro-F1"),
    ("train_seconds", "train s"),
]


def table(runs_dir: Path) -> str:
    rows = []
    for metrics_file in sorted(runs_dir.glob("*/metrics.json")):
        m = json.loads(metrics_file.read_text())
        rows.append((metrics_file.parent.name, m))
    if not rows:
        return f"(no runs under {runs_dir})"
    rows.sort(key=lambda r: -r[1].get("cv_micro_f1", 0.0))
    head = "| config | " + " | ".join(title for _, title in COLUMNS) + " |"
    sep = "| --- |" + " ---: |" * len(COLUMNS)
    lines = [head, sep]
    for name, m in rows:
        cells = [
            f"{m[k]:.0f}" if k == "train_seconds" and k in m else (f"{m[k]:.3f}" if k in m else "–") for k, _ in COLUMNS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    base = rows[0][1]
    if "cv_baseline_top3_micro_f1" in base:
        cells = [
            f"{base.get('cv_baseline_top3_micro_f1', 0):.3f}",
            f"{base.get('cv_baseline_top3_macro_f1', 0):.3f}",
            "–",
            f"{base.get('dev_baseline_top3_micro_f1', 0):.3f}",
            f"{base.get('dev_baseline_top3_macro_f1', 0):.3f}",
            "0",
        ]
        lines.append("| *baseline: 3 most frequent labels* | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    print(table(Path(args[0]) if args else REPO_ROOT / "runs"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
