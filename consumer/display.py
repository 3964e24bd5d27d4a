"""Readable terminal rendering of verdicts and dead letters (rich)."""

from rich.console import Console
from rich.table import Table

from schemas import DeadLetter, Verdict

DECISION_STYLE = {"allow": "green", "review": "yellow", "block": "bold red"}


def outcome_table(title: str = "verdicts") -> Table:
    table = Table(title=title, expand=False)
    for col in ("post", "decision", "top techniques (score / threshold)", "harmful", "cached", "ms"):
        table.add_column(col, overflow="fold")
    return table


def add_outcome(table: Table, out: Verdict | DeadLetter) -> None:
    if isinstance(out, DeadLetter):
        table.add_row(out.event_id or "?", "[magenta]dead letter[/]", f"{out.error_kind}: {out.message}", "", "", "")
        return
    top = ", ".join(f"{'*' if t.flagged else ''}{t.technique} {t.score:.2f}/{t.threshold:.2f}" for t in out.top(3))
    style = DECISION_STYLE.get(out.decision.value, "")
    harmful = "" if out.harmful_score is None else f"{out.harmful_score:.2f}"
    if out.severity:
        harmful += f" {out.severity.split()[0]}"
    table.add_row(out.post_id, f"[{style}]{out.decision.value}[/]", top, harmful, "yes" if out.cached else "",
                  f"{out.timings_ms.get('total', 0):.0f}")


def print_outcomes(outcomes: list[Verdict | DeadLetter], title: str, console: Console | None = None) -> None:
    table = outcome_table(title)
    for out in outcomes:
        add_outcome(table, out)
    (console or Console()).print(table)
