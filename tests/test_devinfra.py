import pytest
import redis
from confluent_kafka.admin import AdminClient

from consumer.devinfra.stack import BROKERS, DevStack, free_port
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
