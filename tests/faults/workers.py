"""Worker processes for the fault scenarios, on top of the shared `worker_factory` fixture."""

import uuid
from pathlib import Path

FAULT_ENV = {
    "MEMEGUARD_MAX_BATCH": "32",
    "MEMEGUARD_MAX_WAIT_S": "0.1",
    "MEMEGUARD_WATCH_BUNDLE": "false",  # no hot-reload thread or control topic: fewer moving parts per start
    "MEMEGUARD_SHUTDOWN_GRACE_S": "10",
}


def fault_worker(worker_factory, tmp_path: Path, **env: str):
    """Faust keeps per-app state in `{app id}-data` under the working directory; keep it in tmp_path."""
    return worker_factory(**{**FAULT_ENV, "F_DATADIR": str(tmp_path / f"faust-{uuid.uuid4().hex[:6]}"), **env})
