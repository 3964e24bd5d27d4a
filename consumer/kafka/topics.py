"""Topic creation and broker readiness, with confluent-kafka's admin client."""

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from tenacity import Retrying, retry_if_exception_type, stop_before_delay, wait_exponential_jitter

from consumer.errors import ConfigError
from consumer.kafka.config import KafkaSecurity, client_config
from consumer.settings import KafkaSettings

log = logging.getLogger(__name__)


def admin(bootstrap: str, quiet: bool = False, error_cb=None) -> AdminClient:
    config = client_config(bootstrap, {"socket.timeout.ms": 3000})
    if error_cb is not None:
        config["error_cb"] = error_cb
    if quiet and not KafkaSecurity().client_logs:
        # librdkafka prints every refused reconnect (a dozen lines per attempt) to stderr, drowning our one
        # warning per attempt; only its critical messages remain (`memeguard --verbose`: all of them).
        config["log_level"] = 2
    return AdminClient(config)


def wait_for_broker(bootstrap: str, timeout_s: float) -> None:
    """Wait until the broker answers a metadata request: retried with exponential backoff and jitter (tenacity),
    so a fleet of workers restarted together does not knock in step. A broker that refuses our credentials
    fails at once: retrying cannot help."""
    attempts = Retrying(retry=retry_if_exception_type(KafkaException), stop=stop_before_delay(timeout_s),
                        wait=wait_exponential_jitter(multiplier=0.25, max=5.0, jitter=0.25), reraise=True,
                        before_sleep=lambda state: log.warning(
                            "broker %s unreachable (attempt %d), retrying in %.1fs", bootstrap,
                            state.attempt_number, state.upcoming_sleep))
    try:
        for attempt in attempts:
            with attempt:
                _ask_for_metadata(bootstrap)
    except KafkaException as e:
        raise ConfigError(
            f"Kafka broker {bootstrap} unreachable for {timeout_s:.0f}s: {e}. "
            "Start it (`memeguard dev up`) or fix MEMEGUARD_KAFKA_BOOTSTRAP."
        ) from e
    tries = attempts.statistics.get("attempt_number", 1)
    if tries > 1:
        log.info("broker %s reachable after %d attempts", bootstrap, tries)


def _ask_for_metadata(bootstrap: str) -> None:
    errors: list[KafkaError] = []
    client = admin(bootstrap, quiet=True, error_cb=errors.append)
    try:
        client.list_topics(timeout=3)
    except KafkaException:
        client.poll(0)  # serves error_cb: why the connections failed
        raise_if_rejected(bootstrap, errors)  # ConfigError: not retried
        raise


def raise_if_rejected(bootstrap: str, errors: list[KafkaError]) -> None:
    """A broker that answers but refuses us (wrong SASL credentials, a TLS certificate either side does not
    trust) will not change its mind on a retry: one clear error now instead of retrying until the timeout."""
    for err in errors:
        text = err.str()
        if err.code() == KafkaError._AUTHENTICATION:
            raise ConfigError(f"Kafka broker {bootstrap} rejected the SASL authentication: {text}. Check "
                              "MEMEGUARD_KAFKA_SASL_USERNAME, MEMEGUARD_KAFKA_SASL_PASSWORD and "
                              "MEMEGUARD_KAFKA_SASL_MECHANISM.")
        if err.code() == KafkaError._SSL or (err.code() == KafkaError._TRANSPORT and "ssl/tls alert" in text):
            raise ConfigError(f"TLS authentication with Kafka broker {bootstrap} failed: {text}. Check "
                              "MEMEGUARD_KAFKA_SSL_CAFILE (the CA that signed the broker's certificate) and "
                              "MEMEGUARD_KAFKA_SSL_CERTFILE/KEYFILE (a client certificate the broker trusts).")


def ensure_topics(bootstrap: str, names: list[str], partitions: int, replication_factor: int = -1,
                  config: dict[str, str] | None = None) -> None:
    """Create the missing ones. replication_factor -1 = the broker's `default.replication.factor`; `config` are
    topic configs (e.g. `cleanup.policy=compact`)."""
    client = admin(bootstrap)
    existing = set(client.list_topics(timeout=10).topics)
    wanted = [NewTopic(n, num_partitions=partitions, replication_factor=replication_factor, config=config or {})
              for n in names if n not in existing]
    if not wanted:
        return
    for name, fut in client.create_topics(wanted, operation_timeout=10).items():
        try:
            fut.result()
        except KafkaException as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise ConfigError(f"Could not create topic {name} on {bootstrap}: {e}") from e


def is_loopback(bootstrap: str) -> bool:
    """Every broker address on this machine: the embedded development broker, not a shared cluster."""
    hosts = [h.strip().rsplit(":", 1)[0].strip("[]") for h in bootstrap.split(",") if h.strip()]
    return bool(hosts) and all(h in ("localhost", "::1") or h.startswith("127.") for h in hosts)


def prepare_topics(s: KafkaSettings, names: list[str], partitions: int | None = None,
                   config: dict[str, str] | None = None) -> None:
    """MEMEGUARD_CREATE_TOPICS: `auto` creates missing topics only on a loopback (development) broker;
    on a shared cluster topics are the platform's to create, so a missing one is one clear error."""
    create = s.create_topics == "always" or (s.create_topics == "auto" and is_loopback(s.kafka_bootstrap))
    if create:
        ensure_topics(s.kafka_bootstrap, names, partitions or s.topic_partitions, s.topic_replication_factor, config)
        return
    existing = set(admin(s.kafka_bootstrap).list_topics(timeout=10).topics)
    missing = [n for n in names if n not in existing]
    if missing:
        raise ConfigError(f"Topic(s) {', '.join(missing)} do not exist on {s.kafka_bootstrap}: create them "
                          "(partitions and replication as your platform requires) or set "
                          "MEMEGUARD_CREATE_TOPICS=always.")
