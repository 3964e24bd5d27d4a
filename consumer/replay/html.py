"""The replay report as one self-contained HTML page (the Jinja2 template templates/report.html): tables plus
matplotlib plots embedded as PNG.

matplotlib belongs to the training extra, not the serving image; without it the page still has every
table and says that the plots need `pip install matplotlib`. The template autoescapes: every string that came
from an event (text, ids) is escaped, since memes carry hostile text.
"""

import base64
import io
import logging
from dataclasses import dataclass
from typing import Any

import jinja2

from consumer.replay.report import EventInfo

log = logging.getLogger(__name__)

SUMMARY_KEYS = ["n_events", "n_verdicts", "n_dead_letters", "n_labelled", "micro_f1", "macro_f1", "micro_precision",
                "micro_recall", "in_training_data", "harmful_auroc", "cache_hit_rate", "events_per_s"]


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


_templates = jinja2.Environment(loader=jinja2.PackageLoader("consumer.replay", "templates"), autoescape=True,
                                undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_templates.filters["fmt"] = _fmt


def _png(fig: Any) -> str:
    """A data: URI of the figure as PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"


@dataclass
class Plot:
    """One chart: its PNG data URI, or, when it has no data, the one sentence the page shows instead."""

    title: str
    src: str | None = None
    omitted: str | None = None


def plots(reports: list[dict[str, Any]], scores: list[dict[str, list[tuple[bool, float]]]]) -> list[Plot] | None:
    """Per-technique F1 (one bar per bundle), decisions, harmful score by gold class, latency; None without
    matplotlib. A chart with no data is not drawn: its Plot says why instead."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    out = []
    title = "Per-technique F1"
    if all("per_technique" in r for r in reports):
        names = list(reports[0]["per_technique"])
        fig, ax = plt.subplots(figsize=(10, 6))
        height = 0.8 / len(reports)
        for k, r in enumerate(reports):
            ax.barh([i + k * height for i in range(len(names))], [r["per_technique"][n]["f1"] for n in names],
                    height=height, label=r["model"])
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(names))], [n[:40] for n in names], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("F1 (zero_division=1)")
        ax.set_title(title)
        ax.legend(fontsize=7)
        out.append(Plot(title, _png(fig)))
    else:
        out.append(Plot(title, omitted="no replayed event carries technique labels (produce --labels, or "
                                       "--labels-file), so there is no F1 to draw."))
    title = "Decisions"
    if any(sum(r["decisions"].values()) for r in reports):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for k, r in enumerate(reports):
            ax.bar([x + k * 0.4 for x in range(3)], list(r["decisions"].values()), width=0.4, label=r["model"])
        ax.set_xticks([0.2 * (len(reports) - 1) + x for x in range(3)], list(reports[0]["decisions"]))
        ax.set_title(title)
        ax.legend(fontsize=7)
        out.append(Plot(title, _png(fig)))
    else:
        out.append(Plot(title, omitted="no event became a verdict, so there are no decisions to draw."))
    title = "Harmful score by gold class"
    if any(s.get("harmful") for s in scores):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for r, s in zip(reports, scores, strict=True):
            pos = [v for gold, v in s.get("harmful", []) if gold]
            neg = [v for gold, v in s.get("harmful", []) if not gold]
            if pos or neg:
                ax.hist([neg, pos], bins=20, range=(0, 1), label=[f"{r['model']} gold no", f"{r['model']} gold yes"])
        ax.set_title(title)
        ax.legend(fontsize=6)
        out.append(Plot(title, _png(fig)))
    else:
        out.append(Plot(title, omitted="no replayed verdict has both a harmful score and a gold harm label "
                                       "(metadata.harmful, or technique labels), so there is nothing to draw."))
    title = "Pipeline latency per event"
    if any(s.get("latency") for s in scores):
        fig, ax = plt.subplots(figsize=(10, 2.8))
        for r, s in zip(reports, scores, strict=True):
            if s.get("latency"):
                ax.hist([v for _, v in s["latency"]], bins=30, alpha=0.6, label=r["model"])
        ax.set_xlabel("pipeline latency per event (ms, the batch it was in)")
        ax.set_title(title)
        ax.legend(fontsize=7)
        out.append(Plot(title, _png(fig)))
    else:
        out.append(Plot(title, omitted="no verdict recorded its pipeline time, so there is no latency to draw."))
    return out


def render(reports: list[dict[str, Any]], scores: list[dict[str, list[tuple[bool, float]]]], topic: str,
           comparison: dict[str, Any] | None = None, events: dict[str, EventInfo] | None = None,
           thumbs: dict[str, str] | None = None) -> str:
    labelled = all("per_technique" in r for r in reports)
    return _templates.get_template("report.html").render(
        topic=topic, reports=reports, summary_keys=SUMMARY_KEYS,
        techniques=list(reports[0]["per_technique"]) if labelled else [], plots=plots(reports, scores),
        comparison=comparison, events=events or {}, thumbs=thumbs or {})
