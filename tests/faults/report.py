"""Run the fault suite and write its per-scenario counts to bench/results/faults_kafka.json (faults_tansu.json
with MEMEGUARD_TEST_BROKER=tansu; bench/results/faults.json is the earlier Tansu run).

`python -m tests.faults.report` runs `pytest -m faults` with MEMEGUARD_FAULTS_REPORT pointing at a
scratch file the scenarios append to (tests/faults/audit.py), then collects it. The tests never read it.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, machine
from tests.conftest import broker_version, selected_broker
from tests.faults.audit import REPORT_ENV

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        lines = Path(tmp) / "faults.jsonl"
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "faults", "-q", "-p", "no:cacheprovider",
                               "-rA", *sys.argv[1:]], cwd=REPO, env={**os.environ, REPORT_ENV: str(lines)},
                              capture_output=True, text=True)
        wall_s = round(time.monotonic() - start, 1)
        scenarios = [json.loads(line) for line in lines.read_text().splitlines()] if lines.exists() else []
    summary = [line for line in proc.stdout.splitlines() if line.startswith(("PASSED", "FAILED", "XFAIL", "ERROR"))]
    RESULTS.mkdir(parents=True, exist_ok=True)
    broker = selected_broker()
    target = RESULTS / ("faults_kafka.json" if broker == "kafka" else f"faults_{broker}.json")
    target.write_text(json.dumps({
        "command": "python -m tests.faults.report " + " ".join(sys.argv[1:]), "machine": machine(),
        "broker": broker_version(broker), "bundle": "tiny (tests' session fixture)",
        "pytest_exit_code": proc.returncode, "wall_s": wall_s, "outcomes": summary, "scenarios": scenarios,
    }, indent=2) + "\n")
    print("\n".join(summary + [f"{len(scenarios)} scenarios, {wall_s}s -> {target.relative_to(REPO)}"]))
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
