"""TLS and SASL against a real Apache Kafka broker: the worker, `produce` and `replay` through MEMEGUARD_KAFKA_*.

One module-scoped KRaft node (started by consumer/devinfra/stack.py's KafkaNode, with listener properties) has no
PLAINTEXT broker listener at all:
- SASL_PLAINTEXT with SCRAM-SHA-512 (also the inter-broker listener); the users `admin` and `memeguard` are
  written into the metadata log when the storage is formatted (`StorageTool format --add-scram`);
- SSL with mutual TLS (`ssl.client.auth=required`), PEM key store and trust store;
- SASL_SSL: SCRAM-SHA-512 inside one-way TLS;
- CONTROLLER (PLAINTEXT, the KRaft quorum of this one node).
The certificates come from a throwaway CA the fixture makes with the openssl CLI; a second, unrelated CA
plays the attacker's (or the misconfigured client's) CA.
"""

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from consumer.devinfra.stack import DevStack, KafkaNode, Service, free_port, port_open
from schemas import Verdict
from tests.conftest import REPO
from tests.memes import dev_events

pytestmark = pytest.mark.integration

ADMIN_PASSWORD = "admin-secret-4c1d"
PASSWORD = "memeguard-secret-9f2e"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
            "-days", "2", "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)


def make_leaf(folder: Path, name: str, ca: str, san: str) -> None:
    """`name.key` (PKCS#8, unencrypted) and `name.pem` signed by `ca`, usable as TLS server and client."""
    (folder / f"{name}.ext").write_text(
        f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={san}\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}", cwd=folder)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)


def make_certs(folder: Path) -> Path:
    """ca/broker/client signed by the test CA; `rogue` is a second CA that signed only `intruder`."""
    folder.mkdir(parents=True, exist_ok=True)
    make_ca(folder, "ca")
    make_ca(folder, "rogue")  # signed neither the broker's certificate nor the client's
    make_leaf(folder, "broker", "ca", "IP:127.0.0.1,DNS:localhost")
    make_leaf(folder, "client", "ca", "DNS:memeguard")
    make_leaf(folder, "intruder", "rogue", "DNS:intruder")
    # Kafka's PEM key store: the private key, then the certificate chain, in one file
    (folder / "broker.keystore.pem").write_text(
        (folder / "broker.key").read_text() + (folder / "broker.pem").read_text() + (folder / "ca.pem").read_text())
    return folder


@dataclass(frozen=True, kw_only=True)
class SecuredKafkaNode(KafkaNode):
    """A KafkaNode whose broker port is SASL_PLAINTEXT/SCRAM (and an SSL port beside it). Formatting adds the
    SCRAM users; readiness is a metadata request that authenticates as `admin`."""

    scram_users: tuple[tuple[str, str], ...] = ()

    def prepare(self) -> None:
        if not (self.data_dir / "meta.properties").is_file():
            from consumer.devinfra.stack import kafka_home, kafka_java, new_cluster_id

            self.properties_file.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
            scram = [arg for user, pw in self.scram_users
                     for arg in ("--add-scram", f"SCRAM-SHA-512=[name={user},password={pw}]")]
            cmd = kafka_java("kafka.tools.StorageTool", "format", "--config", str(self.properties_file),
                             "--cluster-id", new_cluster_id(), *scram, archive=kafka_home() / "kafka.jsa")
            with self.log_file.open("ab") as log:
                subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=120,
                               check=True)
        super().prepare()  # writes the same properties; the storage is formatted already

    def ready(self) -> bool:
        if not port_open(self.port):
            return False
        client = AdminClient({**sasl_config(self.bootstrap, "admin", ADMIN_PASSWORD), "log_level": 2,
                              "socket.timeout.ms": 2000})
        try:
            return self.node_id in client.list_topics(timeout=2).brokers
        except KafkaException:
            return False


def sasl_config(bootstrap: str, user: str = "memeguard", password: str = PASSWORD) -> dict[str, str]:
    return {"bootstrap.servers": bootstrap, "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": user, "sasl.password": password}


@dataclass(frozen=True)
class SecuredBroker:
    node: SecuredKafkaNode
    redis: Service
    ssl_port: int
    sasl_ssl_port: int
    certs: Path  # the folder of PEM files from make_certs

    @property
    def sasl_bootstrap(self) -> str:
        return self.node.bootstrap

    @property
    def ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ssl_port}"

    def sasl_env(self, password: str = PASSWORD) -> dict[str, str]:
        return {"MEMEGUARD_KAFKA_BOOTSTRAP": self.sasl_bootstrap, "MEMEGUARD_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "MEMEGUARD_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "MEMEGUARD_KAFKA_SASL_USERNAME": "memeguard",
                "MEMEGUARD_KAFKA_SASL_PASSWORD": password}

    def sasl_ssl_env(self) -> dict[str, str]:
        return {**self.sasl_env(), "MEMEGUARD_KAFKA_BOOTSTRAP": f"127.0.0.1:{self.sasl_ssl_port}",
                "MEMEGUARD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "MEMEGUARD_KAFKA_SSL_CAFILE": str(self.certs / "ca.pem")}

    def ssl_env(self, ca: str = "ca", client: str = "client") -> dict[str, str]:
        return {"MEMEGUARD_KAFKA_BOOTSTRAP": self.ssl_bootstrap, "MEMEGUARD_KAFKA_SECURITY_PROTOCOL": "SSL",
                "MEMEGUARD_KAFKA_SSL_CAFILE": str(self.certs / f"{ca}.pem"),
                "MEMEGUARD_KAFKA_SSL_CERTFILE": str(self.certs / f"{client}.pem"),
                "MEMEGUARD_KAFKA_SSL_KEYFILE": str(self.certs / f"{client}.key")}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> SecuredBroker:
    state = tmp_path_factory.mktemp("secured-kafka")
    certs = make_certs(state / "certs")
    sasl_port, ssl_port, sasl_ssl_port, controller_port = free_port(), free_port(), free_port(), free_port()
    jaas = f'org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="{ADMIN_PASSWORD}";'
    props = {
        "listeners": f"SASL_PLAINTEXT://127.0.0.1:{sasl_port},SSL://127.0.0.1:{ssl_port},"
                     f"SASL_SSL://127.0.0.1:{sasl_ssl_port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"SASL_PLAINTEXT://127.0.0.1:{sasl_port},SSL://127.0.0.1:{ssl_port},"
                                f"SASL_SSL://127.0.0.1:{sasl_ssl_port}",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,"
                                          "SASL_SSL:SASL_SSL",
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
        "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": jaas,
        "listener.name.ssl.ssl.keystore.type": "PEM",
        "listener.name.ssl.ssl.keystore.location": str(certs / "broker.keystore.pem"),
        "listener.name.ssl.ssl.truststore.type": "PEM",
        "listener.name.ssl.ssl.truststore.location": str(certs / "ca.pem"),
        "listener.name.ssl.ssl.client.auth": "required",
        # ACLs: only what a test denies is denied (no ACL on a resource = allowed); `admin` and the
        # controller listener's principal (ANONYMOUS, PLAINTEXT on loopback) are super users
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "true",
        "super.users": "User:admin;User:ANONYMOUS",
        # SASL_SSL: SCRAM inside one-way TLS (the usual managed-cluster set-up)
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
        "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
        "listener.name.sasl_ssl.ssl.keystore.location": str(certs / "broker.keystore.pem"),
    }
    node = SecuredKafkaNode(name="kafka-secured", port=sasl_port, state_dir=state, controller_port=controller_port,
                            extra=tuple(props.items()),
                            scram_users=(("admin", ADMIN_PASSWORD), ("memeguard", PASSWORD)))
    redis = Service("redis", free_port(), state)
    node.start()
    redis.start()
    yield SecuredBroker(node, redis, ssl_port, sasl_ssl_port, certs)
    node.stop()
    redis.stop()


@pytest.fixture(scope="module")
def stack(secured: SecuredBroker) -> DevStack:
    """worker_factory's broker and Redis for this module: the secured node (no second JVM)."""
    return DevStack(secured.node, secured.redis)



def client_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> str:
    """This test process's own clients (produce, read back) configured as a user would: MEMEGUARD_KAFKA_*."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env["MEMEGUARD_KAFKA_BOOTSTRAP"]


def moderate_end_to_end(worker_factory, topics, monkeypatch, env: dict[str, str], n: int = 6) -> None:
    from consumer.demo.produce import produce_events
    from consumer.kafka.outputs import collect

    worker = worker_factory(**env).start()
    bootstrap = client_env(monkeypatch, env)
    events = dev_events(n)
    assert produce_events(bootstrap, topics.input, events, progress=False) == n
    ids = {e.event_id for e in events}
    outputs = list(collect(bootstrap, topics.output, topics.dlq, ids, timeout_s=60))
    assert {o.event_id for o in outputs} == ids, worker.log()
    assert all(isinstance(o, Verdict) and len(o.techniques) == 22 for o in outputs), outputs
    assert worker.stop() == 0, worker.log()


def test_worker_over_sasl_scram_sha_512(secured, worker_factory, topics, monkeypatch):
    moderate_end_to_end(worker_factory, topics, monkeypatch, secured.sasl_env())


def test_worker_over_mutual_tls(secured, worker_factory, topics, monkeypatch):
    moderate_end_to_end(worker_factory, topics, monkeypatch, secured.ssl_env())


def test_worker_over_sasl_ssl(secured, worker_factory, topics, monkeypatch):
    moderate_end_to_end(worker_factory, topics, monkeypatch, secured.sasl_ssl_env(), n=3)


def cli(env: dict[str, str], *args: str, timeout_s: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "consumer.cli", *args], env={**os.environ, **env}, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout_s)


def test_produce_and_replay_clis(secured, tiny_bundle, topics, tmp_path):
    # produce over SASL/SCRAM, replay the same topic over mutual TLS
    done = cli(secured.sasl_env(), "produce", "--limit", "4", "--labels", "--topic", topics.input)
    assert done.returncode == 0, done.stderr
    assert f"4 events acknowledged by {secured.sasl_bootstrap}" in done.stdout
    out = tmp_path / "replay"
    done = cli({**secured.ssl_env(), "MEMEGUARD_BUNDLE_PATH": str(tiny_bundle),
                "MEMEGUARD_FILE_ROOT": str(REPO.parent / "shared" / "data"), "MEMEGUARD_INTRA_OP_THREADS": "1"},
               "replay", "--topic", topics.input, "--out", str(out), "--no-cache", "--no-progress",
               "--idle-timeout", "5")
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["n_verdicts"] == 4 and report["n_dead_letters"] == 0, report


STARTUP_TIMEOUT_S = 20


REJECTIONS = ["wrong-password", "untrusted-broker-ca", "client-cert-not-trusted"]


def rejected(secured: SecuredBroker, case: str) -> tuple[dict[str, str], str]:
    """The settings of a client the broker turns away, and the words its error must contain."""
    return {
        "wrong-password": (secured.sasl_env(password="not-the-password"), "rejected the SASL authentication"),
        # the client's CA did not sign the broker's certificate
        "untrusted-broker-ca": (secured.ssl_env(ca="rogue"), "certificate verify failed"),
        # the broker's trust store does not know the CA that signed the client's certificate
        "client-cert-not-trusted": (secured.ssl_env(client="intruder"), "bad certificate"),
    }[case]


@pytest.mark.parametrize("case", REJECTIONS)
def test_rejected_credentials_are_one_clear_error(secured, worker_factory, case):
    env, expected = rejected(secured, case)
    worker = worker_factory(**env, MEMEGUARD_STARTUP_TIMEOUT_S=str(STARTUP_TIMEOUT_S),
                            MEMEGUARD_LOG_FORMAT="text").start(wait_ready=False)
    started = time.monotonic()
    try:
        rc = worker.proc.wait(STARTUP_TIMEOUT_S + 30)  # the interpreter and its imports take a few seconds
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker still running {STARTUP_TIMEOUT_S + 30}s after start ({case}):\n{worker.log()}")
    log = worker.log()
    assert rc == 2, log
    assert time.monotonic() - started < STARTUP_TIMEOUT_S, f"gave up only at the startup timeout:\n{log}"
    flat = " ".join(log.split())  # rich wraps the error line at the terminal width
    assert "authentication" in flat and expected in flat, log
    assert sum(line.startswith("error:") for line in log.splitlines()) == 1, log  # one error, at once:
    assert "Traceback" not in log and "retrying" not in log, log  # no traceback, no retry loop


@pytest.mark.parametrize("case", ["wrong-password", "client-cert-not-trusted"])
def test_produce_with_rejected_credentials_fails_at_once(secured, topics, case):
    env, expected = rejected(secured, case)
    started = time.monotonic()
    done = cli(env, "produce", "--limit", "2", "--topic", topics.input, timeout_s=60)
    flat = " ".join(done.stderr.split())
    assert done.returncode == 2 and "authentication" in flat and expected in flat, done.stderr
    assert time.monotonic() - started < 20, "waited for delivery reports that could never come"



def test_acl_denying_the_output_topic_stops_the_batch_uncommitted(secured, worker_factory, topics, monkeypatch):
    """An ACL denies the worker WRITE on its output topic. That is the worker's credentials, not the records:
    the batch is not dead-lettered, nothing of it is committed, and the worker exits (75) with the reason."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    from consumer.demo.produce import produce_events
    from consumer.kafka.topics import ensure_topics

    env = secured.sasl_env()
    bootstrap = client_env(monkeypatch, env)
    ensure_topics(bootstrap, [topics.input, topics.output, topics.dlq], 2)
    admin = AdminClient(sasl_config(bootstrap, "admin", ADMIN_PASSWORD))
    deny = AclBinding(ResourceType.TOPIC, topics.output, ResourcePatternType.LITERAL, "User:memeguard", "*",
                      AclOperation.WRITE, AclPermissionType.DENY)
    for fut in admin.create_acls([deny]).values():
        fut.result(10)
    worker = worker_factory(**env, MEMEGUARD_RESTART_BACKOFF_S="0").start()
    produce_events(bootstrap, topics.input, dev_events(3), progress=False)
    deadline = time.monotonic() + 90
    while worker.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker.proc.poll() == 75, worker.log()
    assert "refuses this worker's writes" in worker.log() and "TopicAuthorization" in worker.log()
    request = ConsumerGroupTopicPartitions(topics.group, [TopicPartition(topics.input, p) for p in range(2)])
    committed = admin.list_consumer_group_offsets([request])[topics.group].result(10)
    assert all(tp.offset < 0 for tp in committed.topic_partitions), committed.topic_partitions  # nothing committed
