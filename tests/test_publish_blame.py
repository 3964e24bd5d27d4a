"""Which publishing failures a record is blamed for (issue 27, item 2): only its own refusals (too large,
invalid, unserialisable) dead-letter it; an outage raises OutputsNotAcknowledged and takes its crash-loop
attempt back. The end-to-end check on a three-broker cluster is in tests/test_faults_failover.py."""

import asyncio

import pytest
from confluent_kafka import KafkaError, KafkaException

from consumer.core.pipeline import Outcome, RawRecord, dead_letter
from consumer.core.publish import (
    OutcomePublisher,
    OutputsNotAcknowledged,
    PublishRefused,
    RecordTooLarge,
    is_infrastructure_failure,
    is_record_error,
)
from consumer.worker.crash_guard import CrashLoopBreaker
from schemas import ErrorKind
from tests.inprocess import MemoryTopic
from tests.test_cli import verdict


def kafka(code: int) -> KafkaException:
    return KafkaException(KafkaError(code))


@pytest.mark.parametrize("error", [RecordTooLarge("big"), kafka(KafkaError.MSG_SIZE_TOO_LARGE),
                                   kafka(KafkaError.INVALID_RECORD), ValueError("surrogates not allowed")])
def test_a_records_own_refusal_may_dead_letter_it(error: BaseException) -> None:
    assert is_record_error(error)


@pytest.mark.parametrize("error", [kafka(KafkaError._MSG_TIMED_OUT), kafka(KafkaError.NOT_ENOUGH_REPLICAS),
                                   kafka(KafkaError.LEADER_NOT_AVAILABLE), kafka(KafkaError._TRANSPORT),
                                   BufferError("queue full"), ConnectionResetError(104, "reset")])
def test_an_outage_is_never_the_records_fault(error: BaseException) -> None:
    assert not is_record_error(error)


class RefusingTopic(MemoryTopic):
    """Takes the send, then fails its acknowledgement with `code`, as librdkafka's delivery report does."""

    def __init__(self, name: str, code: int) -> None:
        super().__init__(name)
        self.code = code

    async def send(self, key: bytes | None, value: bytes) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        fut.set_exception(kafka(self.code))
        return fut


def record(offset: int = 0) -> RawRecord:
    return RawRecord(key=b"k", value=b"{}", topic="raw", partition=0, offset=offset)


def test_an_outage_raises_and_dead_letters_nothing() -> None:
    """A verdict whose acknowledgement times out is not a publish_failed dead letter, and a dead letter the
    DLQ cannot take (NOT_ENOUGH_REPLICAS) is not retried truncated: both leave the batch uncommitted."""
    dlq = MemoryTopic("dlq")
    publisher = OutcomePublisher(RefusingTopic("verdicts", KafkaError._MSG_TIMED_OUT), dlq)
    with pytest.raises(OutputsNotAcknowledged) as raised:
        asyncio.run(publisher.publish([Outcome(record(), verdict=verdict("p1"))]))
    assert is_infrastructure_failure(raised.value) and not isinstance(raised.value, PublishRefused)
    assert not dlq.messages
    refusing_dlq = RefusingTopic("dlq", KafkaError.NOT_ENOUGH_REPLICAS)
    outcome = Outcome(record(), dead_letter=dead_letter(record(), ErrorKind.INVALID_JSON, "not json"))
    with pytest.raises(OutputsNotAcknowledged, match="NOT_ENOUGH_REPLICAS"):
        asyncio.run(OutcomePublisher(MemoryTopic("verdicts"), refusing_dlq).publish([outcome]))


def test_a_verdict_too_large_for_the_topic_is_still_dead_lettered() -> None:
    dlq = MemoryTopic("dlq")
    publisher = OutcomePublisher(RefusingTopic("verdicts", KafkaError.MSG_SIZE_TOO_LARGE), dlq)
    asyncio.run(publisher.publish([Outcome(record(), verdict=verdict("p1"))]))
    [(_, value)] = dlq.messages
    assert b"publish_failed" in value


def test_an_authorization_refusal_says_so() -> None:
    publisher = OutcomePublisher(MemoryTopic("verdicts"), RefusingTopic("dlq", 29))
    outcome = Outcome(record(), dead_letter=dead_letter(record(), ErrorKind.INVALID_JSON, "not json"))
    with pytest.raises(PublishRefused, match="TopicAuthorizationFailed"):
        asyncio.run(publisher.publish([outcome]))


@pytest.mark.integration
def test_take_back_undoes_this_attempt_so_an_outage_never_makes_a_poison_record(stack) -> None:
    """Three attempts that end on an outage, the last one alone: without take_back the third would have
    been the record's second attempt alone, a poison_record."""
    async def go() -> tuple[bool, str | None]:
        breaker = CrashLoopBreaker(stack.redis_url, "take-back-test", 1.0, 1.0)
        batch = [record(0), record(1)]
        await breaker.finish(batch)  # a clean slate for the test's keys
        for _ in range(2):
            assert not await breaker.begin_batch(batch)
            await breaker.take_back(batch)
        # A real crash (no take_back) makes the next batch suspect, one record alone; it ends on an outage.
        assert not await breaker.begin_batch(batch)
        assert await breaker.begin_batch(batch)
        assert await breaker.begin_alone(batch[0]) is None
        await breaker.take_back(batch)
        suspect = await breaker.begin_batch(batch)  # the crash still counts: one by one again
        poison = await breaker.begin_alone(batch[0])
        await breaker.finish(batch)
        await breaker.close()
        return suspect, poison

    suspect, poison = asyncio.run(go())
    assert suspect and poison is None
