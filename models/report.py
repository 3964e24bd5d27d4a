"""Console summaries of runs (rich tables when writing to a terminal, plain lines otherwise)."""

from pathlib import Path

from rich.console import Console
from rich.table import Table

from models.run_dir import read_run


def print_train_summary(run_dir: Path) -> None:
    files = read_run(run_dir)
    table = Table(title=f"{files.config.name} → {run_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in files.metrics.items():
        table.add_row(key, f"{value:.3f}" if "seconds" not in key else f"{value:.1f}")
    Console().print(table)
    for key in ("cv_protocol", "dev_protocol", "thresholds_protocol"):
        if key in files.info:
            Console().print(f"[dim]{key}: {files.info[key]}[/dim]")
