"""The replay report as one self-contained HTML page: tables plus matplotlib plots embedded as PNG.

matplotlib belongs to the training extra, not the serving image; without it the page still has every
table and says that the plots need `pip install matplotlib`. Every string that came from an event (text,
ids) goes through `html.escape`: memes carry hostile text.
"""

import base64
import io
import logging
from html import escape
from typing import Any

from consumer.replay.report import EventInfo

log = logging.getLogger(__name__)

CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td.l,th.l{text-align:left}img.plot{max-width:100%}
.neg{color:#b00}.pos{color:#070}img.thumb{max-height:120px}"""


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img class="plot" alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def plots(reports: list[dict[str, Any]], scores: list[dict[str, list[tuple[bool, float]]]]) -> list[str]:
    """Per-technique F1 (one bar per bundle), decisions, harmful score by gold class, latency."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["<p>Plots need matplotlib (<code>pip install matplotlib</code>); the tables above are complete.</p>"]
    out = []
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
        ax.set_title("Per-technique F1")
        ax.legend(fontsize=7)
        out.append(_png(fig))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for k, r in enumerate(reports):
        axes[0].bar([x + k * 0.4 for x in range(3)], list(r["decisions"].values()), width=0.4, label=r["model"])
    axes[0].set_xticks([0.2 * (len(reports) - 1) + x for x in range(3)], list(reports[0]["decisions"]))
    axes[0].set_title("Decisions")
    axes[0].legend(fontsize=7)
    for r, s in zip(reports, scores, strict=True):
        pos = [v for gold, v in s.get("harmful", []) if gold]
        neg = [v for gold, v in s.get("harmful", []) if not gold]
        if pos or neg:
            axes[1].hist([neg, pos], bins=20, range=(0, 1), label=[f"{r['model']} gold no", f"{r['model']} gold yes"])
    axes[1].set_title("Harmful score by gold class")
    axes[1].legend(fontsize=6)
    out.append(_png(fig))
    fig, ax = plt.subplots(figsize=(10, 2.8))
    for r, s in zip(reports, scores, strict=True):
        if s.get("latency"):
            ax.hist([v for _, v in s["latency"]], bins=30, alpha=0.6, label=r["model"])
    ax.set_xlabel("pipeline latency per event (ms, the batch it was in)")
    ax.legend(fontsize=7)
    out.append(_png(fig))
    return out


def _summary_table(reports: list[dict[str, Any]]) -> str:
    keys = ["n_events", "n_verdicts", "n_dead_letters", "n_labelled", "micro_f1", "macro_f1", "micro_precision",
            "micro_recall", "harmful_auroc", "cache_hit_rate", "events_per_s"]
    head = "".join(f"<th>{escape(r['model'])}</th>" for r in reports)
    rows = [f"<tr><th class=l>{k}</th>" + "".join(f"<td>{_fmt(r.get(k))}</td>" for r in reports) + "</tr>"
            for k in keys]
    for q in ("p50", "p95", "p99"):
        rows.append(f"<tr><th class=l>latency {q} (ms)</th>"
                    + "".join(f"<td>{_fmt(r['latency_ms'][q])}</td>" for r in reports) + "</tr>")
    for d in ("allow", "review", "block"):
        rows.append(f"<tr><th class=l>decision {d}</th>"
                    + "".join(f"<td>{r['decisions'][d]}</td>" for r in reports) + "</tr>")
    return f"<table><tr><th class=l></th>{head}</tr>{''.join(rows)}</table>"


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.4f}" if isinstance(v, float) else escape(str(v))


def _technique_table(reports: list[dict[str, Any]]) -> str:
    if not all("per_technique" in r for r in reports):
        return "<p>No labelled events: no per-technique figures.</p>"
    cols = "".join(f"<th>F1 {escape(r['model'])}</th><th>P</th><th>R</th><th>AUROC</th>" for r in reports)
    delta = "<th>ΔF1 (B−A)</th>" if len(reports) == 2 else ""
    rows = []
    for name, fig in reports[0]["per_technique"].items():
        cells = "".join(f"<td>{_fmt(r['per_technique'][name]['f1'])}</td><td>{_fmt(r['per_technique'][name]['precision'])}"
                        f"</td><td>{_fmt(r['per_technique'][name]['recall'])}</td>"
                        f"<td>{_fmt(r['per_technique'][name]['auroc'])}</td>" for r in reports)
        if len(reports) == 2:
            d = reports[1]["per_technique"][name]["f1"] - fig["f1"]
            cells += f"<td class={'pos' if d > 0 else 'neg' if d < 0 else ''}>{d:+.4f}</td>"
        rows.append(f"<tr><td class=l>{escape(name)}</td><td>{fig['support']}</td>{cells}</tr>")
    return f"<table><tr><th class=l>technique</th><th>support</th>{cols}{delta}</tr>{''.join(rows)}</table>"


def _disagreement_table(items: list[dict[str, Any]], events: dict[str, EventInfo], thumbs: dict[str, str]) -> str:
    rows = []
    for d in items:
        e = events.get(d["event_id"])
        img = f'<img class="thumb" alt="meme" src="{thumbs[d["event_id"]]}">' if d["event_id"] in thumbs else ""
        rows.append(
            f"<tr><td class=l>{escape(d['event_id'])}<br>{img}</td><td class=l>{escape((e.text or '') if e else '')}</td>"
            f"<td class=l>{escape(', '.join(e.labels or [])) if e else ''}</td>"
            f"<td>{escape(d['decision_a'])}</td><td>{escape(d['decision_b'])}</td>"
            f"<td class=l>{escape(', '.join(d['only_a']))}</td><td class=l>{escape(', '.join(d['only_b']))}</td></tr>")
    return ("<table><tr><th class=l>event</th><th class=l>text</th><th class=l>gold</th><th>A</th><th>B</th>"
            f"<th class=l>flagged only by A</th><th class=l>flagged only by B</th></tr>{''.join(rows)}</table>")


def render(reports: list[dict[str, Any]], scores: list[dict[str, list[tuple[bool, float]]]], topic: str,
           comparison: dict[str, Any] | None = None, events: dict[str, EventInfo] | None = None,
           thumbs: dict[str, str] | None = None) -> str:
    title = f"memeguard replay of {escape(topic)}"
    parts = [f"<!doctype html><meta charset=utf-8><title>{title}</title><style>{CSS}</style><h1>{title}</h1>",
             "<h2>Summary</h2>", _summary_table(reports), "<h2>Per technique</h2>", _technique_table(reports),
             "<h2>Plots</h2>", *plots(reports, scores)]
    if comparison is not None:
        parts += [f"<h2>Disagreements ({comparison['n_disagreements']}; A = {escape(comparison['model_a'])}, "
                  f"B = {escape(comparison['model_b'])})</h2>",
                  _disagreement_table(comparison["disagreements"], events or {}, thumbs or {})]
    return "\n".join(parts)
