"""`evaluate`: run a trained model's whole graph over a labelled set, write report.json and PNG plots."""

from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from models import plots
from models.data import Meme, harmful_targets, load_dataset, multi_hot
from models.inference import load_model
from models.metrics import binarize, binary_auroc, per_label, summary
from models.network import MemeClassifier
from models.preprocess import TextTokenizer, images_to_tensor, load_image
from models.run_dir import read_run, write_json


@torch.inference_mode()
def run_graph(model: MemeClassifier, memes: list[Meme], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(probs [N, 22(+1)], fused encoder features [N, D]) through the full inference graph."""
    tok = TextTokenizer(model.text_encoder.tokenizer_file, model.text_encoder.text_spec) if model.text_encoder else None
    probs, feats = [], []
    for start in range(0, len(memes), batch_size):
        chunk = memes[start : start + batch_size]
        if model.image_encoder is not None:
            pixels = images_to_tensor([load_image(m.image) for m in chunk], model.image_encoder.image_spec)
        else:
            pixels = torch.zeros(len(chunk), 3, 1, 1)
        if tok is not None:
            ids, mask = tok([m.text for m in chunk])
        else:
            ids, mask = torch.zeros(len(chunk), 1, dtype=torch.int64), torch.ones(len(chunk), 1, dtype=torch.int64)
        img, txt = model.encode(pixels, ids, mask)
        probs.append(model.probs_from_features(img, txt))
        feats.append(torch.cat([img, txt], dim=-1))
    return torch.cat(probs).numpy(), torch.cat(feats).numpy()


def evaluate(run_dir: Path, data: str | None = None, out: Path | None = None) -> dict[str, Any]:
    files = read_run(run_dir)
    cfg = files.config
    data = data or cfg.data.dev
    memes = load_dataset(data)
    y = multi_hot(memes, tuple(files.labels))
    if cfg.text_encoder.kind == "tfidf":
        from models.tfidf_svm import predict_memes

        probs, feats = predict_memes(run_dir, memes), None
    else:
        model, _ = load_model(run_dir)
        probs, feats = run_graph(model, memes)
    n = len(files.labels)
    pred = binarize(probs[:, :n], files.thresholds)
    report: dict[str, Any] = {
        "run": cfg.name,
        "data": data,
        "n": len(memes),
        # A final model is fitted on its whole pool: scoring a pool split measures fit, not generalisation.
        "in_training_data": data in cfg.data.pool,
        **summary(y, pred),
        "per_label": per_label(y, pred, files.labels),
        "training_metrics": files.metrics,
    }
    harmful = harmful_targets(memes)
    if harmful is not None and probs.shape[1] > n:
        report["harmful_auroc"] = binary_auroc(harmful, probs[:, n])
    out = out or run_dir / f"eval-{Path(data).stem}"
    out.mkdir(parents=True, exist_ok=True)
    plots.f1_bars(report["per_label"], out / "per_technique_f1.png")
    plots.pr_curves(y, probs[:, :n], files.labels, out / "pr_curves.png")
    plots.cooccurrence(y, files.labels, out / "label_cooccurrence.png")
    if feats is not None:
        plots.tsne_map(feats, y, files.labels, out / "tsne.png")
    write_json(out / "report.json", report)
    _print(report, out)
    return report


def _print(report: dict[str, Any], out: Path) -> None:
    console = Console()
    table = Table(title=f"{report['run']} on {report['data']} (n={report['n']})")
    for col in ("micro-F1", "macro-F1", "precision", "recall", "exact match"):
        table.add_column(col, justify="right")
    table.add_row(*(f"{report[k]:.3f}" for k in ("micro_f1", "macro_f1", "micro_precision", "micro_recall", "exact_match")))
    console.print(table)
    if report["in_training_data"]:
        console.print(
            "[yellow]note: this data is part of the run's training pool; see metrics.json for CV "
            "and held-out dev figures[/yellow]"
        )
    console.print(f"report and plots: {out}")
