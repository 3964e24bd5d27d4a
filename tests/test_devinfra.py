import time

import pytest
import redis
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from consumer.devinfra.stack import BROKERS, DevStack, KafkaCluster, free_port
from consumer.errors import ConfigError
from consumer.kafka.topics import ensure_topics, wait_for_broker

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("broker", BROKERS)
def test_dev_stack_is_idempotent_and_stops_cleanly(tmp_path, broker):
    stack = DevStack.at(tmp_path, free_port(), free_port(), broker=broker)
    stack.up()
    try:
        pids = (stack.kafka.pid(), stack.redis.pid())
        stack.up()  # second `dev up` reuses the running services
        assert (stack.kafka.pid(), stack.redis.pid()) == pids
        assert redis.Redis.from_url(stack.redis_url).ping()
        wait_for_broker(stack.bootstrap, 10)
        ensure_topics(stack.bootstrap, ["t1"], 2)
        ensure_topics(stack.bootstrap, ["t1"], 2)  # already there: no error
        assert stack.kafka.log_file.exists() and stack.kafka.pid_file.exists()
    finally:
        stack.down()
    assert not stack.kafka.running() and not stack.redis.running()
    assert not stack.kafka.pid_file.exists()


def test_unreachable_broker_gives_one_clear_error():
    with pytest.raises(ConfigError, match="unreachable.*memeguard dev up"):
        wait_for_broker(f"127.0.0.1:{free_port()}", timeout_s=1.5)


def test_kafka_dev_broker_keeps_its_topics_across_a_restart(tmp_path):
    stack = DevStack.at(tmp_path, free_port(), free_port(), broker="kafka")
    try:
        stack.kafka.start()
        ensure_topics(stack.bootstrap, ["kept"], 1)
        stack.kafka.stop()
        stack.kafka.start()  # formatted storage is reused, not formatted again
        assert "kept" in AdminClient({"bootstrap.servers": stack.bootstrap}).list_topics(timeout=10).topics
    finally:
        stack.down()


def test_three_node_kafka_cluster_survives_a_killed_leader_and_a_frozen_broker(tmp_path):
    cluster = KafkaCluster.at(tmp_path)
    cluster.up()
    try:
        ensure_topics(cluster.bootstrap, ["ha"], 1)  # replication factor: the cluster's default, 3
        deadline = time.monotonic() + 30
        while cluster.leader("ha") == -1:  # metadata of a new topic reaches every broker a moment later
            assert time.monotonic() < deadline, "no leader for the new topic"
            time.sleep(0.2)
        meta = AdminClient({"bootstrap.servers": cluster.bootstrap}).list_topics("ha", timeout=10).topics["ha"]
        assert sorted(meta.partitions[0].replicas) == [1, 2, 3]
        # A request that lands on the frozen broker waits request.timeout.ms for it (30 s by default), which
        # says nothing about the cluster: 10 s here.
        producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "enable.idempotence": True,
                             "request.timeout.ms": 10000, "socket.timeout.ms": 10000})

        def produce_one(value: bytes) -> None:
            errors = []
            producer.produce("ha", value, on_delivery=lambda err, _msg: errors.append(err))
            assert producer.flush(60) == 0 and errors == [None], errors

        produce_one(b"before")
        leader = cluster.leader("ha")
        cluster.kill(leader)
        cluster.wait_brokers({1, 2, 3} - {leader}, 30)
        deadline = time.monotonic() + 30
        while cluster.leader("ha") in (leader, -1):
            assert time.monotonic() < deadline, "no new leader"
            time.sleep(0.2)
        produce_one(b"after the kill")  # two in-sync replicas left: min.insync.replicas=2 holds
        cluster.start(leader)
        cluster.wait_brokers({1, 2, 3})
        frozen = next(n for n in (1, 2, 3) if n != cluster.leader("ha"))
        cluster.pause(frozen)
        assert cluster.node(frozen).paused() and cluster.node(frozen).bootstrap not in cluster.live_bootstrap()
        produce_one(b"while a follower is frozen")  # once it leaves the ISR (replica.lag.time.max.ms, 5 s)
        cluster.resume(frozen)
    finally:
        cluster.down()
    assert not any(n.running() for n in cluster.nodes)
