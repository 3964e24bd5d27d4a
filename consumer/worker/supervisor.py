"""`memeguard worker --processes N`: N worker processes on one host, supervised."""

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from consumer.ops.logs import configure_logging
from consumer.settings import WorkerSettings

log = logging.getLogger(__name__)


def run_worker_processes(n: int, cuda_devices: list[str] | None = None) -> int:
    """`memeguard worker --processes N`: N members of the consumer group on this host, each its own process
    with its own ONNX Runtime session (decode and inference scale with cores; on a GPU host they share the
    GPU, or take `cuda_devices` round-robin through CUDA_VISIBLE_DEVICES). SIGTERM/SIGINT are forwarded and
    each member finishes its batches in flight; a member that exits on its own (an infrastructure failure
    ends a worker so that its batch is re-delivered) is started again, unless it fails within its first
    seconds (a configuration error), which stops them all."""
    settings = WorkerSettings()
    base_id = settings.instance_id or socket.gethostname()
    stopping = False

    def env_of(i: int) -> dict[str, str]:
        env = {**os.environ, "MEMEGUARD_INSTANCE_ID": f"{base_id}-{i}"}  # a transactional.id per member
        if settings.ready_file is not None:
            env["MEMEGUARD_READY_FILE"] = f"{settings.ready_file}.{i}"
        if settings.metrics_port:
            env["MEMEGUARD_METRICS_PORT"] = str(settings.metrics_port + i)
        if cuda_devices:
            env["CUDA_VISIBLE_DEVICES"] = cuda_devices[i % len(cuda_devices)]
        if settings.intra_op_threads == 0:  # "one per core" is shared out: N sessions must not oversubscribe
            env["MEMEGUARD_INTRA_OP_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
        return env

    def start(i: int) -> tuple[subprocess.Popen, float]:
        return subprocess.Popen([sys.executable, "-m", "consumer.cli", "worker"], env=env_of(i)), time.monotonic()

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc, _ in members.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    configure_logging(settings.log_format, settings.log_level)
    if settings.ready_file is not None:
        settings.ready_file.unlink(missing_ok=True)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    members = {i: start(i) for i in range(n)}
    log.info("worker processes started", extra={"processes": n, "pids": [p.pid for p, _ in members.values()]})
    ready = False
    while True:
        if not ready and settings.ready_file is not None and all(
                Path(f"{settings.ready_file}.{i}").exists() for i in members):
            settings.ready_file.touch()  # every member consumes
            ready = True
        for i, (proc, started) in list(members.items()):
            code = proc.poll()
            if code is None or stopping:
                continue
            if code != 0 and time.monotonic() - started < 10:
                log.critical("worker process failed at start; stopping all", extra={"member": i, "exit": code})
                forward(signal.SIGTERM, None)
                break
            log.warning("worker process exited; starting it again", extra={"member": i, "exit": code})
            members[i] = start(i)
        if stopping:
            codes = [proc.wait() for proc, _ in members.values()]
            log.info("worker processes stopped", extra={"exits": codes})
            return max(codes, key=abs)
        time.sleep(0.2)
