"""Publish outcomes and wait for the broker's acknowledgement before the batch counts as done.

Both workers publish through librdkafka (confluent-kafka): `ProducerTopic` is one topic of one producer,
transactional or plain idempotent (consumer/worker/producer_config.py, the same for the confluent-kafka loop and
the Faust agent; the agent's outputs used to go through Faust's aiokafka producer: ~1 ms of Python per record and
a round trip through Faust's send buffer; librdkafka batches and acknowledges in C).
"""

import asyncio
import hashlib
import logging
import math
import time
from collections import Counter
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from consumer.core.pipeline import Outcome, RawRecord, dead_letter, last_resort_dead_letter
from consumer.core.seams import OutputTopic
from schemas import DeadLetter, ErrorKind

TRUNCATED_ORIGINAL_BYTES = 64 * 1024


def truncated(dl: DeadLetter) -> DeadLetter:
    """A dead letter small enough for any broker; the full original stays at its origin offset."""
    original = dl.original_value
    return dl.model_copy(update={
        "original_value": original[:TRUNCATED_ORIGINAL_BYTES], "original_truncated": True,
        "original_size": len(original), "original_sha256": hashlib.sha256(original).hexdigest(),
    })

log = logging.getLogger(__name__)

# Kafka's authorization error codes (topic, group, cluster, transactional id): a refusal of that kind is
# about the worker's credentials, not about the record, so it must stop the batch, not dead-letter it.
AUTHORIZATION_ERROR_CODES = frozenset({29, 30, 31, 53})
# The protocol's names for them, the same whichever client library reported the error.
AUTHORIZATION_ERROR_NAMES = {29: "TopicAuthorizationFailed", 30: "GroupAuthorizationFailed",
                             31: "ClusterAuthorizationFailed", 53: "TransactionalIdAuthorizationFailed"}
# The only refusals that belong to the record itself, so the only ones that may dead-letter it
# (`publish_failed`): it is too large, or the broker finds it invalid. Anything else (a message timeout,
# NOT_ENOUGH_REPLICAS, no leader, a lost connection, a full local queue) says nothing about the record: the
# batch stays uncommitted and is consumed again once the broker takes writes.
RECORD_ERROR_CODES = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE,
                                KafkaError.INVALID_RECORD, KafkaError.INVALID_MSG, KafkaError.INVALID_TIMESTAMP})


class OutputsNotAcknowledged(Exception):
    """An infrastructure failure: the broker did not take this batch's outputs. The batch stays uncommitted,
    the worker exits (code 75) and its batch is consumed again; no record is blamed (no dead letter, no
    crash-loop attempt)."""


class PublishRefused(OutputsNotAcknowledged):
    """The broker refuses this worker's writes (its ACLs)."""


def _error_codes(error: BaseException | None):
    """The Kafka error codes along `error`'s cause chain. aiokafka's errors carry `errno`, confluent-kafka's a
    KafkaError; Faust wraps the first in ProducerSendError (`raise ... from exc`). An OSError's errno is no
    Kafka code."""
    while error is not None:
        code = None if isinstance(error, OSError) else getattr(error, "errno", None)
        if code is None and error.args and hasattr(error.args[0], "code"):
            code = error.args[0].code()
        if code is not None:
            yield code
        error = error.__cause__


def authorization_error_code(error: BaseException | None) -> int | None:
    """The Kafka authorization error code behind `error`, if it is one."""
    return next((c for c in _error_codes(error) if c in AUTHORIZATION_ERROR_CODES), None)


def is_record_error(error: BaseException) -> bool:
    """True when the failure is the record's own, so it may be dead-lettered: the broker or the client finds it
    too large or invalid, or it does not serialise. Any other Kafka client error, a full local queue, a lost
    connection or a timeout is the infrastructure's."""
    if isinstance(error, RecordTooLarge):
        return True
    if codes := list(_error_codes(error)):
        return any(c in RECORD_ERROR_CODES for c in codes)
    return not isinstance(error, (KafkaException, BufferError, OutputsNotAcknowledged, OSError, TimeoutError))


def is_infrastructure_failure(error: BaseException | None) -> bool:
    """True when `error` (or what caused it) is the broker not taking outputs, or any Kafka client error: never
    something about a record (a record's own refusal is dead-lettered inside OutcomePublisher.publish)."""
    while error is not None:
        if isinstance(error, (OutputsNotAcknowledged, KafkaException)):
            return True
        error = error.__cause__
    return False


def not_acknowledged(error: BaseException, where: str) -> OutputsNotAcknowledged:
    if (code := authorization_error_code(error)) is not None:
        return PublishRefused(f"the broker refuses this worker's writes ({AUTHORIZATION_ERROR_NAMES[code]}: "
                              f"{error}); check the ACLs of the output and dead-letter topics")
    return OutputsNotAcknowledged(f"{where} not acknowledged ({error}); the batch stays uncommitted")


CALL_TIMEOUT_S = 20.0
RECORD_OVERHEAD_BYTES = 512  # record batch and record headers around a key and a value


class RecordTooLarge(Exception):
    """Refused before producing: the broker would refuse it (in a transaction: the whole transaction)."""


class Deadline:
    """Bounds the delivery waits of one transaction: once it has passed, every wait and every send fails at
    once (librdkafka's own message timeout does not always fire while the partition leader moves)."""

    def __init__(self) -> None:
        self.at = math.inf

    def start(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "no delivery report before the transaction's "
                                            "deadline", txn_requires_abort=True))


class Delivery:
    """One produced record's delivery report. Awaiting it flushes the producer (in a thread) until the
    report is in; a failed delivery raises. The first await of a batch flushes them all, so a batch costs
    one thread hop, not one per record."""

    __slots__ = ("producer", "deadline", "done", "error")

    def __init__(self, producer: Producer, deadline: Deadline) -> None:
        self.producer = producer
        self.deadline = deadline
        self.done = False
        self.error: KafkaError | None = None

    def __call__(self, err: KafkaError | None, msg: Message) -> None:  # on_delivery, in the flushing thread
        self.error = err
        self.done = True

    def __await__(self):
        if self.done:  # the batch's first await flushed them all: no coroutine per record for the rest
            if self.error is not None:
                raise KafkaException(self.error)
            return iter(())
        return self._wait().__await__()

    async def _wait(self) -> None:
        while not self.done:
            self.deadline.check()
            await asyncio.to_thread(self.producer.flush, 1.0)
        if self.error is not None:
            raise KafkaException(self.error)


class ProducerTopic:
    """What OutcomePublisher and ExplanationPublisher need of a topic: `send()` returning an awaitable
    delivery, and its name."""

    def __init__(self, producer: Producer, name: str, max_message_bytes: int, deadline: Deadline | None = None) -> None:
        self.producer = producer
        self.name = name
        self.max_record_bytes = max_message_bytes - RECORD_OVERHEAD_BYTES
        self.deadline = deadline or Deadline()

    async def send(self, key: bytes | None, value: bytes) -> Delivery:
        self.deadline.check()
        size = len(value) + len(key or b"")
        if size > self.max_record_bytes:
            raise RecordTooLarge(f"{size} bytes is over the {self.max_record_bytes} bytes a record of {self.name} "
                                 "may have")
        delivery = Delivery(self.producer, self.deadline)
        try:
            self.producer.produce(self.name, key=key, value=value, on_delivery=delivery)
        except BufferError:  # the local queue is full: let it drain, once
            await asyncio.to_thread(self.producer.flush, CALL_TIMEOUT_S)
            self.producer.produce(self.name, key=key, value=value, on_delivery=delivery)
        return delivery


class OutcomePublisher:
    """Verdicts keyed by post id to the output topic; dead letters keyed by the original key to the DLQ.

    A verdict refused for itself (larger than the topic allows, invalid: `is_record_error`) becomes a
    `publish_failed` dead letter. Any other failure, or a dead letter that cannot be written, raises
    OutputsNotAcknowledged: the batch's offsets must not be committed, and no record is to blame.
    """

    def __init__(self, verdict_topic: OutputTopic, dlq_topic: OutputTopic) -> None:
        self.verdict_topic = verdict_topic
        self.dlq_topic = dlq_topic
        self.counts: Counter[str] = Counter()

    async def _send(self, topic: OutputTopic, key: bytes | None, value: bytes) -> Any:
        return await topic.send(key=key, value=value)

    async def _send_dead_letter(self, record: RawRecord, dl: DeadLetter) -> None:
        """Always publishable: a dead letter that will not serialise is replaced by the last-resort one (no
        input-derived text), one the broker refuses by one with its original truncated. Only a broker that
        refuses even that raises: an infrastructure failure, and the batch stays uncommitted."""
        try:
            value = dl.model_dump_json().encode()
        except Exception as e:  # noqa: BLE001 (any serialisation bug must end in a dead letter, not a crash)
            log.error("dead letter for %s could not be serialised (%s); publishing the last-resort one",
                      dl.origin, type(e).__name__)
            self.counts["last_resort_dead_letters"] += 1
            dl = last_resort_dead_letter(record, dl.error_kind, e)
            value = dl.model_dump_json().encode()
        try:
            await (await self._send(self.dlq_topic, record.key, value))
        except Exception as e:
            if dl.original_truncated or not is_record_error(e):
                raise not_acknowledged(e, f"dead letter for {dl.origin}") from e
            log.warning("dead letter for %s refused (%s); publishing it with the original truncated",
                        dl.origin, e)
            try:
                await (await self._send(self.dlq_topic, record.key, truncated(dl).model_dump_json().encode()))
            except Exception as again:
                raise not_acknowledged(again, f"truncated dead letter for {dl.origin}") from again

    async def publish(self, outcomes: list[Outcome]) -> None:
        """Send everything, then await every acknowledgement; failures are rerouted, never dropped."""
        sent = []
        for outcome in outcomes:
            try:
                if outcome.verdict is not None:
                    fut = await self._send(self.verdict_topic, outcome.verdict.post_id.encode(),
                                           outcome.verdict.model_dump_json().encode())
                else:
                    fut = await self._send(self.dlq_topic, outcome.record.key,
                                           outcome.dead_letter.model_dump_json().encode())
                sent.append((outcome, fut, None))
            except Exception as e:  # the client can refuse a record before it is sent (size limits)
                sent.append((outcome, None, e))
        for outcome, fut, error in sent:
            if error is None:
                try:
                    await fut
                except Exception as e:
                    error = e
            if error is None:
                self.counts["verdicts" if outcome.verdict is not None else "dead_letters"] += 1
                continue
            if not is_record_error(error):
                raise not_acknowledged(error, f"output for {outcome.record.topic}/{outcome.record.partition}"
                                              f"@{outcome.record.offset}") from error
            if outcome.verdict is not None:
                log.warning("publishing verdict %s failed: %s; dead-lettering it", outcome.verdict.event_id, error)
                dl = dead_letter(outcome.record, ErrorKind.PUBLISH_FAILED,
                                 f"verdict could not be published to {self.verdict_topic.name}: "
                                 f"{error}", outcome.verdict.event_id)
            else:
                dl = outcome.dead_letter
            await self._send_dead_letter(outcome.record, dl)
            self.counts["dead_letters"] += 1
