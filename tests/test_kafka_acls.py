"""docs/security.md's Kafka ACLs, applied on a real Apache Kafka broker (issue 27 item 8).

One KRaft node (tests/test_kafka_security.py's SecuredKafkaNode) with only a SASL_PLAINTEXT/SCRAM broker
listener and the StandardAuthorizer with `allow.everyone.if.no.acl.found=false`: what no ACL allows is refused.
The ACLs are read from the ```acl block of docs/security.md (so the document is what is tested), created as
`admin`, and then:
- a real worker process (exactly-once, so the transactional-id ACL is used too) runs as `worker` on events the
  `producer` principal published; the review page, alerter and learning principals read the verdicts with
  their own groups and write their own topics;
- outside the table, each principal is refused by the broker.
"""

import re
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from consumer.devinfra.stack import DevStack, Service, free_port
from schemas import Verdict
from tests.conftest import REPO
from tests.memes import dev_events
from tests.test_kafka_security import ADMIN_PASSWORD, SecuredKafkaNode, sasl_config

pytestmark = pytest.mark.integration

USERS = ("producer", "worker", "review", "alerter", "learning", "nobody")  # nobody: a valid login, no ACLs
PASSWORDS = {user: f"{user}-secret-{n}7a" for n, user in enumerate(USERS)}
TOPICS = {"memes.raw": 2, "memes.verdicts": 2, "memes.dlq": 1, "memes.explanations": 1, "memes.reviews": 1,
          "memeguard.control": 1, "memeguard.control.status": 1, "memeguard.alerts": 1, "memeguard.alerts.dlq": 1,
          "memes.shadow": 1}
DENIED = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED}


def documented_acls(doc: Path = REPO / "docs" / "security.md") -> list[AclBinding]:
    block = re.search(r"```acl\n(.*?)```", doc.read_text(), re.S)
    assert block, f"no ```acl block in {doc}"
    bindings = []
    for line in block.group(1).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        principal, operations, rtype, pattern, name = line.split()
        for op in operations.split(","):
            bindings.append(AclBinding(ResourceType[rtype], name, ResourcePatternType[pattern], principal, "*",
                                       AclOperation[op], AclPermissionType.ALLOW))
    return bindings


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("acl-kafka")
    port, controller_port = free_port(), free_port()
    jaas = ('org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" '
            f'password="{ADMIN_PASSWORD}";')
    props = {
        "listeners": f"SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"SASL_PLAINTEXT://127.0.0.1:{port}",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
        "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": jaas,
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "false",  # deny by default: only the table grants
        "super.users": "User:admin;User:ANONYMOUS",  # ANONYMOUS: the controller listener on loopback
        "group.initial.rebalance.delay.ms": "0",
    }
    node = SecuredKafkaNode(name="kafka-acl", port=port, state_dir=state, controller_port=controller_port,
                            extra=tuple(props.items()),
                            scram_users=(("admin", ADMIN_PASSWORD), *PASSWORDS.items()))
    redis = Service("redis", free_port(), state)
    node.start()
    redis.start()
    admin = AdminClient(sasl_config(node.bootstrap, "admin", ADMIN_PASSWORD))
    for fut in admin.create_topics([NewTopic(t, n, 1) for t, n in TOPICS.items()]).values():
        fut.result(30)
    acls = documented_acls()
    for fut in admin.create_acls(acls).values():
        fut.result(30)
    # create_acls returns once the controller has them; a broker's authorizer applies them a moment later.
    # describe_acls answers from that authorizer: wait until it lists every binding.
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,
                                  AclPermissionType.ANY)
    deadline = time.monotonic() + 30
    while len(admin.describe_acls(everything).result(10)) < len(acls):
        assert time.monotonic() < deadline, "the broker never listed the ACLs it accepted"
    yield node, redis
    node.stop()
    redis.stop()


@pytest.fixture(scope="module")
def stack(broker) -> DevStack:
    """worker_factory's broker and Redis: the ACL node."""
    return DevStack(*broker)


def config(node: SecuredKafkaNode, user: str) -> dict[str, str]:
    return sasl_config(node.bootstrap, user, PASSWORDS[user])


def env_of(node: SecuredKafkaNode, user: str) -> dict[str, str]:
    return {"MEMEGUARD_KAFKA_BOOTSTRAP": node.bootstrap, "MEMEGUARD_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "MEMEGUARD_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "MEMEGUARD_KAFKA_SASL_USERNAME": user,
            "MEMEGUARD_KAFKA_SASL_PASSWORD": PASSWORDS[user]}


def write(node, user: str, topic: str, records: list[tuple[bytes, bytes]]) -> list[int | None]:
    """Each record's delivery error code (None: acknowledged)."""
    codes: list[int | None] = []
    producer = Producer({**config(node, user), "acks": "all", "message.timeout.ms": 20000})
    for key, value in records:
        producer.produce(topic, key=key, value=value,
                         on_delivery=lambda err, _m: codes.append(None if err is None else err.code()))
    producer.flush(30)
    assert len(codes) == len(records), f"{user} -> {topic}: {len(codes)} of {len(records)} delivery reports"
    return codes


def read(node, user: str, topic: str, group: str, n: int, timeout_s: float = 60) -> tuple[list, int | None]:
    """Up to n records of `topic` through `group` (subscribe, commit), or the authorization error that stopped it."""
    consumer = Consumer({**config(node, user), "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    got, error = [], None
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < n and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() in DENIED:
                    error = msg.error().code()
                    break
                continue
            got.append(msg)
        if got:
            consumer.commit(asynchronous=False)  # the group's offsets: needs READ on the group
    finally:
        consumer.close()
    return got, error


def refused_write(node, user: str, topic: str) -> None:
    assert write(node, user, topic, [(b"k", b"{}")]) == [KafkaError.TOPIC_AUTHORIZATION_FAILED], (user, topic)


def refused_read(node, user: str, topic: str, group: str) -> None:
    got, error = read(node, user, topic, group, 1, timeout_s=30)
    assert not got and error in DENIED, (user, topic, group, got, error)


def test_each_process_works_under_its_acls_and_is_refused_outside_them(broker, worker_factory, monkeypatch):
    node, _ = broker
    # producer -> memes.raw
    events = dev_events(4)
    assert write(node, "producer", "memes.raw",
                 [(e.post_id.encode(), e.model_dump_json().encode()) for e in events]) == [None] * len(events)

    # the worker, as `worker`, exactly-once (transactional.id memeguard-worker-acl), topics created by admin
    worker = worker_factory(**env_of(node, "worker"), MEMEGUARD_INPUT_TOPIC="memes.raw",
                            MEMEGUARD_OUTPUT_TOPIC="memes.verdicts", MEMEGUARD_DLQ_TOPIC="memes.dlq",
                            MEMEGUARD_GROUP_ID="memeguard-worker", MEMEGUARD_CONTROL_TOPIC="memeguard.control",
                            MEMEGUARD_CREATE_TOPICS="never", MEMEGUARD_GUARANTEE="exactly_once",
                            MEMEGUARD_INSTANCE_ID="acl").start()

    # review page: verdicts through its group; then a review on memes.reviews
    verdicts, error = read(node, "review", "memes.verdicts", "memeguard-review", len(events))
    assert error is None, (error, worker.log())
    ids = {Verdict.model_validate_json(m.value()).event_id for m in verdicts}
    assert ids == {e.event_id for e in events}, worker.log()
    assert write(node, "review", "memes.reviews", [(b"p", b'{"type": "review"}')]) == [None]
    # alerter: verdicts through its own group, alerts out
    got, error = read(node, "alerter", "memes.verdicts", "memeguard-alert", len(events))
    assert error is None and len(got) == len(events)
    assert write(node, "alerter", "memeguard.alerts", [(b"a", b"{}")]) == [None]
    # learning loop: dataset build's reader (read_topic, group memeguard-topic-reader) sees the review;
    # rollout/promote write the control topic, shadow writes memes.shadow
    for name, value in env_of(node, "learning").items():
        monkeypatch.setenv(name, value)
    from consumer.kafka.topic_reader import read_topic

    assert [r.value for r in read_topic(node.bootstrap, "memes.reviews", timeout_s=30)] == [b'{"type": "review"}']
    assert write(node, "learning", "memeguard.control", [(None, b"{}")]) == [None]
    assert write(node, "learning", "memes.shadow", [(b"s", b"{}")]) == [None]

    # the worker needed nothing outside its rows; then it stops cleanly (commits its transaction)
    assert "Authorization" not in worker.log() and "authorization" not in worker.log(), worker.log()
    assert worker.stop() == 0, worker.log()

    # outside the table: refused by the broker
    for user, topic in [("producer", "memes.verdicts"), ("producer", "memeguard.control"),
                        ("worker", "memes.reviews"), ("worker", "memeguard.control"), ("worker", "memes.raw"),
                        ("review", "memes.verdicts"), ("review", "memeguard.control"),
                        ("alerter", "memes.reviews"), ("alerter", "memes.verdicts"),
                        ("learning", "memes.verdicts"), ("learning", "memes.raw"),
                        ("nobody", "memes.raw"), ("nobody", "memes.reviews")]:
        refused_write(node, user, topic)
    refused_read(node, "producer", "memes.verdicts", "memeguard-review")  # no READ on the topic or group
    refused_read(node, "alerter", "memes.reviews", "memeguard-alert")  # its group, a topic it may not read
    refused_read(node, "review", "memes.verdicts", "memeguard-worker")  # a topic it reads, another's group
    refused_read(node, "nobody", "memes.verdicts", "memeguard-review")
