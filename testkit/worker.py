"""A real `memeguard worker` process, started the way production starts it."""

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class WorkerProcess:
    """A real `memeguard worker` process (python -m consumer.cli worker)."""

    env: dict[str, str]
    log_path: Path
    ready_file: Path
    proc: subprocess.Popen | None = None
    starts: int = field(default=0)
    argv: list[str] = field(default_factory=lambda: ["-m", "consumer.cli", "worker"])  # after the interpreter

    def start(self, wait_ready: bool = True, timeout_s: float = 90.0) -> "WorkerProcess":
        self.ready_file.unlink(missing_ok=True)
        self.starts += 1
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, *self.argv], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO)
        if wait_ready:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker not ready after {timeout_s}s:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, sig: int = 15, timeout_s: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)
