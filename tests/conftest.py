"""Shared fixtures: a real broker (Apache Kafka by default; MEMEGUARD_TEST_BROKER=tansu for Tansu) and a real
redis-server on loopback, a tiny real model bundle, unique topics per test, and worker processes started the
way production starts them."""

import os
import time
from pathlib import Path

import pytest

from consumer.devinfra.stack import BROKERS, DevStack, free_port
from testkit.topics import Topics
from testkit.worker import WorkerProcess

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _offline_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("home")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for var in ("MPLCONFIGDIR", "YOLO_CONFIG_DIR", "DEEPFACE_HOME"):
        os.environ.setdefault(var, str(home / var.lower()))


def selected_broker() -> str:
    """MEMEGUARD_TEST_BROKER: `kafka` (Apache Kafka KRaft, the default) or `tansu`."""
    kind = os.environ.get("MEMEGUARD_TEST_BROKER", "kafka").strip().lower()
    if kind not in BROKERS:
        raise pytest.UsageError(f"MEMEGUARD_TEST_BROKER={kind!r}: expected one of {', '.join(BROKERS)}")
    return kind



@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> DevStack:
    """Started once per session with the same code as `memeguard dev up`, on free ports."""
    s = DevStack.at(tmp_path_factory.mktemp("dev"), free_port(), free_port(), broker=selected_broker())
    s.up()
    yield s
    s.down()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A real three-master Redis Cluster on loopback (consumer.devinfra.stack.RedisCluster), once per session. A test
    that kills a master starts it again before it ends (`redis_cluster.start(i)`)."""
    from consumer.devinfra.stack import RedisCluster

    cluster = RedisCluster.at(tmp_path_factory.mktemp("redis-cluster"))
    cluster.up()
    yield cluster
    cluster.down()


def broker_version(kind: str) -> str:
    if kind != "kafka":
        return kind
    from consumer.devinfra.stack import kafka_version
    from consumer.errors import ConfigError

    try:
        return f"Apache Kafka {kafka_version()}"
    except ConfigError:
        return "Apache Kafka (not installed: bash scripts/install_kafka.sh)"


def pytest_report_header(config: pytest.Config) -> str:
    return f"memeguard test broker: {broker_version(selected_broker())} (MEMEGUARD_TEST_BROKER=kafka|tansu)"


@pytest.fixture(autouse=True)
def _scenario_clock() -> None:
    """Each fault scenario reports its own wall time (tests/faults/audit.py)."""
    from tests.faults import audit

    audit.SCENARIO_STARTED[0] = time.monotonic()


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from exporters.testing import write_tiny_bundle

    return write_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny", seed=0)


@pytest.fixture
def topics() -> Topics:
    return Topics.unique()


@pytest.fixture
def worker_factory(stack: DevStack, tiny_bundle: Path, tmp_path: Path, topics: Topics):
    # The broker and Redis live for the whole session, but each test starts from an empty cache:
    # otherwise a meme another test already scored with the same bundle comes back cached.
    import redis

    redis.Redis.from_url(stack.redis_url, socket_timeout=5).flushdb()
    started: list[WorkerProcess] = []

    def make(**overrides: str) -> WorkerProcess:
        n = len(started)
        env = {
            **os.environ,
            "MEMEGUARD_KAFKA_BOOTSTRAP": stack.bootstrap,
            "MEMEGUARD_REDIS_URL": stack.redis_url,
            "MEMEGUARD_BUNDLE_PATH": str(tiny_bundle),
            "MEMEGUARD_INPUT_TOPIC": topics.input,
            "MEMEGUARD_OUTPUT_TOPIC": topics.output,
            "MEMEGUARD_DLQ_TOPIC": topics.dlq,
            "MEMEGUARD_GROUP_ID": topics.group,
            "MEMEGUARD_TOPIC_PARTITIONS": "2",
            "MEMEGUARD_MAX_BATCH": "16",
            "MEMEGUARD_MAX_WAIT_S": "0.1",
            "MEMEGUARD_INTRA_OP_THREADS": "1",
            "MEMEGUARD_FILE_ROOT": str(REPO.parent / "shared" / "data"),
            "MEMEGUARD_FETCH_ALLOWED_NETWORKS": '["127.0.0.1/32"]',
            "MEMEGUARD_FETCH_TIMEOUT_S": "2",
            "MEMEGUARD_MAX_IMAGE_BYTES": "2000000",
            "MEMEGUARD_MAX_IMAGE_PIXELS": "20000000",
            "MEMEGUARD_REDIS_RETRY_AFTER_S": "0.5",
            "MEMEGUARD_READY_FILE": str(tmp_path / f"worker{n}.ready"),
            "MEMEGUARD_LOG_FORMAT": "json",
            # Faust keeps per-app state in `{app id}-data` under the working directory (the repository): here
            # in the test's own folder instead.
            "F_DATADIR": str(tmp_path / f"faust-data{n}"),
            **overrides,
        }
        w = WorkerProcess(env=env, log_path=tmp_path / f"worker{n}.log", ready_file=tmp_path / f"worker{n}.ready")
        started.append(w)
        return w

    yield make
    for w in started:
        w.stop(sig=9, timeout_s=5)
