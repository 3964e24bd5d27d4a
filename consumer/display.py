"""Readable terminal rendering of verdicts and dead letters (rich)."""

import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from schemas import DeadLetter, Verdict

DECISION_STYLE = {"allow": "green", "review": "yellow", "block": "bold red"}


def outcome_table(title: str = "verdicts") -> Table:
    table = Table(title=title, expand=False)
    for col in ("post", "decision", "top techniques (score / threshold)", "harmful", "cached", "ms"):
        table.add_column(col, overflow="fold")
    return table


def _top(out: Verdict) -> str:
    return ", ".join(f"{'*' if t.flagged else ''}{t.technique} {t.score:.2f}/{t.threshold:.2f}" for t in out.top(3))


def _brief(record: object, limit: int = 160) -> str:
    """Any other record (an alert, a review, a shadow verdict that is not ours to parse) as compact JSON."""
    text = record if isinstance(record, str) else json.dumps(record, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def add_outcome(table: Table, out: "Verdict | DeadLetter | object", topic: str = "") -> None:
    if not isinstance(out, (Verdict, DeadLetter)):
        table.add_row(topic, "[cyan]record[/]", escape(_brief(out)), "", "", "")
        return
    if isinstance(out, DeadLetter):
        table.add_row(out.event_id or "?", "[magenta]dead letter[/]", f"{out.error_kind}: {out.message}", "", "", "")
        return
    top = _top(out)
    style = DECISION_STYLE.get(out.decision.value, "")
    harmful = "" if out.harmful_score is None else f"{out.harmful_score:.2f}"
    if out.severity:
        harmful += f" {out.severity.split()[0]}"
    table.add_row(out.post_id, f"[{style}]{out.decision.value}[/]", top, harmful, "yes" if out.cached else "",
                  f"{out.timings_ms.get('total', 0):.0f}")


def outcome_line(out: "Verdict | DeadLetter | object", topic: str = "") -> str:
    """One plain line per record, for a pipe (`memeguard tail | grep block`)."""
    if isinstance(out, DeadLetter):
        return f"{out.event_id or '?'}\tdead letter\t{out.error_kind}: {out.message}"
    if isinstance(out, Verdict):
        harmful = "" if out.harmful_score is None else f"harmful {out.harmful_score:.2f}"
        return "\t".join([out.post_id, out.decision.value, _top(out), harmful, "cached" if out.cached else ""]).rstrip()
    return f"{topic}\t{_brief(out, 2000)}"


def print_outcomes(outcomes: list[Verdict | DeadLetter], title: str, console: Console | None = None) -> None:
    table = outcome_table(title)
    for out in outcomes:
        add_outcome(table, out)
    (console or Console()).print(table)
