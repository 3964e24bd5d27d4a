"""`memeguard evaluate` on a HarMeme annotation file (jsonl: `id`, `image`, `labels`, `text`), text only.

HarMeme's images are not distributed with its annotations, so each record is scored from its text with a
neutral (mid-grey) image: the harm head reads only the text; the technique head sees no picture evidence.
Writes predictions.jsonl (`id`, `harmful_score`, `harmful` at the bundle's harm threshold, `severity`,
`severity_scores`, `decision`, `reasons`) and report.json: binary AUROC / accuracy / macro-F1, 3-class accuracy /
macro-F1, and the decisions' allow / review / block rates with the share of harmful memes caught.
The OCR texts contain slurs: nothing here logs or reports a text.
"""

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from consumer.core.policy import DecisionPolicy, harm_fields, serving_policy
from consumer.core.runtime import BundleRuntime
from consumer.errors import ConfigError
from schemas import TechniqueScore
from schemas.policy import SEVERITY_LEVELS
from scoring.harm import harm_figures, operating_point

NEUTRAL_IMAGE_SIDE = 224


def is_harmeme_file(path: Path) -> bool:
    """A .jsonl whose first record's `labels[0]` is one of HarMeme's three severities."""
    if path.suffix != ".jsonl" or not path.is_file():
        return False
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    return False
                labels = row.get("labels") if isinstance(row, dict) else None
                return isinstance(labels, list) and bool(labels) and labels[0] in SEVERITY_LEVELS
    return False


def load_harmeme(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(records with a severity, number skipped: no or unknown severity label)."""
    records, skipped = [], 0
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} line {n} is not JSON ({e.msg}); pass a HarMeme .jsonl file.") from e
        labels = row.get("labels") if isinstance(row, dict) else None
        if not isinstance(labels, list) or not labels or labels[0] not in SEVERITY_LEVELS or "id" not in row:
            skipped += 1
            continue
        records.append({"id": str(row["id"]), "text": str(row.get("text") or ""),
                        "severity": SEVERITY_LEVELS.index(labels[0])})
    return records, skipped


def evaluate_harmeme(runtime: BundleRuntime, data: Path, out_dir: Path, policy: DecisionPolicy | None = None,
                     batch_size: int = 16, progress: bool = True) -> dict[str, Any]:
    manifest = runtime.manifest
    harm = manifest.output("harm")
    if harm is None or manifest.output("severity") is None:
        raise ConfigError(f"bundle {runtime.version} declares no harm and severity outputs; a HarMeme file can "
                          "only evaluate a bundle with a harm head (build the default with `memeguard bundle`).")
    records, skipped = load_harmeme(data)
    if not records:
        raise ConfigError(f"{data} holds no HarMeme record with a severity label.")
    decide = serving_policy(manifest, policy)
    threshold = harm.thresholds[0] if harm.thresholds else 0.5
    grey = Image.new("RGB", (NEUTRAL_IMAGE_SIDE, NEUTRAL_IMAGE_SIDE), (128, 128, 128))
    out_dir.mkdir(parents=True, exist_ok=True)
    p_harm, sev_probs, decisions = [], [], []
    bar = tqdm(total=len(records), desc="evaluate", unit="meme", disable=not progress, file=sys.stderr)
    with (out_dir / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for start in range(0, len(records), batch_size):
            batch = records[start:start + batch_size]
            pred = runtime.predict([grey] * len(batch), [r["text"] for r in batch])
            for i, r in enumerate(batch):
                fields = harm_fields(pred, i)
                if fields is None:
                    raise ConfigError(f"the bundle gave a non-finite harm score for record {r['id']}")
                techniques = [TechniqueScore(technique=n, score=float(np.clip(p, 0, 1)), threshold=float(t),
                                             flagged=bool(p >= t))
                              for n, p, t in zip(manifest.labels, pred.technique_probs[i], manifest.thresholds,
                                                 strict=True)]
                decision, reasons = decide.decide(techniques, fields["harmful_score"], fields["severity_scores"])
                p_harm.append(fields["harmful_score"])
                sev_probs.append(fields["severity_scores"])
                decisions.append(decision.value)
                f.write(json.dumps({
                    "id": r["id"], "harmful_score": round(fields["harmful_score"], 6),
                    "harmful": fields["harmful_score"] >= threshold, "severity": fields["severity"],
                    "severity_scores": fields["severity_scores"], "decision": decision.value, "reasons": reasons,
                }) + "\n")
            bar.update(len(batch))
    bar.close()
    severity = np.asarray([r["severity"] for r in records])
    harmful = (severity > 0).astype(int)
    scores = np.asarray(p_harm)
    d = np.asarray(decisions)
    flagged, blocked = d != "allow", d == "block"
    report: dict[str, Any] = {
        "data": str(data), "format": "HarMeme (text only; neutral image)", "n_records": len(records) + skipped,
        "n_evaluated": len(records), "n_skipped_no_severity": skipped, "model": runtime.version,
        "provider": runtime.provider, "policy": decide.id, "harm_threshold": threshold,
        "binary": harm_figures(harmful, scores, threshold=threshold),
        "three_class": {k.removeprefix("severity_"): v for k, v in
                        harm_figures(harmful, scores, severity, np.asarray(sev_probs), threshold).items()
                        if k.startswith("severity_")},
        "decisions": operating_point(harmful, flagged, blocked, float(harmful.mean())).as_dict(),
        "binary_definition": "harmful = somewhat harmful or very harmful (the published binary setting)",
        # A figure on the head's own training data measures fit (in-sample), not generalisation.
        "in_training_data": ("yes (in-sample: the harm head was fitted on this file)"
                             if harm.trained_on and data.stem in harm.trained_on else
                             f"unknown: compare with the harm head's training data, {harm.trained_on or 'not recorded'}"),
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report
