"""Topic creation and broker readiness, with confluent-kafka's admin client."""

import logging
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.errors import ConfigError
from consumer.kafka_config import client_config

log = logging.getLogger(__name__)


def admin(bootstrap: str, quiet: bool = False) -> AdminClient:
    config = client_config(bootstrap, {"socket.timeout.ms": 3000})
    if quiet:
        # librdkafka prints every refused reconnect (a dozen lines per attempt) to stderr, drowning our one
        # warning per attempt; only its critical messages remain.
        config["log_level"] = 2
    return AdminClient(config)


def wait_for_broker(bootstrap: str, timeout_s: float) -> None:
    """Wait with exponential backoff until the broker answers a metadata request."""
    deadline = time.monotonic() + timeout_s
    delay = 0.25
    attempt = 0
    while True:
        attempt += 1
        try:
            admin(bootstrap, quiet=True).list_topics(timeout=3)
            if attempt > 1:
                log.info("broker %s reachable after %d attempts", bootstrap, attempt)
            return
        except KafkaException as e:
            if time.monotonic() + delay > deadline:
                raise ConfigError(
                    f"Kafka broker {bootstrap} unreachable for {timeout_s:.0f}s: {e}. "
                    "Start it (`memeguard dev up`) or fix MEMEGUARD_KAFKA_BOOTSTRAP."
                ) from e
            log.warning("broker %s unreachable (attempt %d), retrying in %.1fs", bootstrap, attempt, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def ensure_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    client = admin(bootstrap)
    existing = set(client.list_topics(timeout=10).topics)
    wanted = [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names if n not in existing]
    if not wanted:
        return
    for name, fut in client.create_topics(wanted, operation_timeout=10).items():
        try:
            fut.result()
        except KafkaException as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise ConfigError(f"Could not create topic {name} on {bootstrap}: {e}") from e
