"""The output producer and its record limits, one for both engines: verdicts and dead letters go out through
librdkafka (consumer/core/publish.py) whether the confluent-kafka loop (worker/loop.py) or the Faust agent
(worker/faust_agent.py) consumes; idempotent (retries neither duplicate nor reorder a partition's outputs), acks=all.

One delivery timeout for both: `message.timeout.ms` = MEMEGUARD_DELIVERY_TIMEOUT_S (15 s; the transaction
timeout follows it when longer, as librdkafka requires). A delivery that cannot complete fails the batch (the
worker exits 75 uncommitted and its batch is consumed again, no record blamed) after 15 s instead of
librdkafka's default 5 minutes. The Faust agent used 30 s before.

One record limit rule for both: the smaller of the topic's `max.message.bytes` (read from the broker; Kafka's
default when it cannot be read) and the producer's own. A record over it goes down the publisher's fallbacks
before it is produced (a broker-side refusal would doom a whole transaction). The Faust agent did not read the
topic's limit before and left such a record to the broker's refusal.
"""

import logging

from confluent_kafka import Producer
from confluent_kafka.admin import ConfigResource

from consumer.core.publish import RECORD_OVERHEAD_BYTES, Deadline, OutcomePublisher, ProducerTopic
from consumer.kafka.config import client_config
from consumer.kafka.topics import admin
from consumer.settings import WorkerSettings

log = logging.getLogger(__name__)

TRANSACTION_TIMEOUT_MS = 15_000  # a transaction spans only produce + commit (processing happens before it)
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588


def producer_limit(settings: WorkerSettings) -> int:
    """librdkafka's own request limit: above the largest record the publisher lets through."""
    return min(2 * settings.max_event_bytes + 64 * 1024, 1_000_000_000)


def output_record_limit(settings: WorkerSettings) -> int:
    """The largest output record an at-least-once worker publishes: room for a dead letter that carries a large
    original (2 x max_event_bytes, with its headers); anything larger goes down the publisher's fallbacks."""
    return 2 * settings.max_event_bytes + RECORD_OVERHEAD_BYTES


def transaction_timeout_ms(settings: WorkerSettings) -> int:
    """librdkafka refuses a message timeout longer than the transaction timeout."""
    return max(TRANSACTION_TIMEOUT_MS, round(settings.delivery_timeout_s * 1000))


def delivery_deadline_s(settings: WorkerSettings) -> float:
    """How long a batch's acknowledgements may take in all: the message timeout, and a margin for librdkafka's
    own timeout not firing while a partition leader moves (publish.Deadline)."""
    return settings.delivery_timeout_s + 5.0


def output_producer(settings: WorkerSettings, transactional_id: str | None = None) -> Producer:
    """The producer of verdicts and dead letters; transactional when given a `transactional_id`."""
    return Producer(client_config(settings.kafka_bootstrap, {
        **({"transactional.id": transactional_id,
            "transaction.timeout.ms": transaction_timeout_ms(settings)} if transactional_id is not None else {}),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": settings.producer_linger_ms,
        "message.max.bytes": producer_limit(settings),
        "message.timeout.ms": round(settings.delivery_timeout_s * 1000),
        "logger": log,
    }))


def max_message_bytes(settings: WorkerSettings, topic: str, limit: int) -> int:
    """The most a record batch of `topic` may hold: its `max.message.bytes` (Kafka's default when it cannot
    be read), and never more than `limit`."""
    try:
        client = admin(settings.kafka_bootstrap, quiet=True)  # referenced until the answer is in
        futures = client.describe_configs([ConfigResource("topic", topic)], request_timeout=10)
        config = next(iter(futures.values())).result()
        topic_limit = int(config["max.message.bytes"].value)
    except Exception as e:  # noqa: BLE001 (e.g. no DescribeConfigs permission: the safe default)
        log.warning("max.message.bytes of %s unknown (%s); assuming Kafka's default %d", topic, e,
                    KAFKA_DEFAULT_MAX_MESSAGE_BYTES)
        topic_limit = KAFKA_DEFAULT_MAX_MESSAGE_BYTES
    return min(topic_limit, limit)


def explanations_topic(settings: WorkerSettings) -> ProducerTopic:
    """The explainer's topic, the same for both engines: best effort, after the verdict and outside any
    transaction, so on a plain idempotent producer of its own."""
    plain = Producer(client_config(settings.kafka_bootstrap, {"enable.idempotence": True, "acks": "all",
                                                              "logger": log}))
    return ProducerTopic(plain, settings.explanations_topic,
                         max_message_bytes(settings, settings.explanations_topic, producer_limit(settings)))


def output_publisher(settings: WorkerSettings, producer: Producer, deadline: Deadline | None = None,
                     transactions: bool = False) -> OutcomePublisher:
    """Verdicts to the output topic, dead letters to the DLQ, each record within its topic's limit. Without
    transactions the limit leaves room for a dead letter that carries a large original (output_record_limit)."""
    limit = producer_limit(settings) if transactions else output_record_limit(settings)
    return OutcomePublisher(
        ProducerTopic(producer, settings.output_topic, max_message_bytes(settings, settings.output_topic, limit),
                      deadline),
        ProducerTopic(producer, settings.dlq_topic, max_message_bytes(settings, settings.dlq_topic, limit), deadline))
