"""The Faust engine's guard against offset holes: records faust-streaming never hands its agent.

Around a rebalance faust-streaming can skip records of a partition: flow resumes before the partitions are
sought to their committed offsets, and a prefetched batch moves its read offset past records it then drops
as already read (faust-streaming#216, #221). It takes such a hole for transaction markers, fills it and
commits past it. Two CI runs lost records that way: 408 of 1,500 in a rebalance, and in a restart after a
SIGKILL a worker went idle with records never moderated (docs/kafka.md).

`HoleGuard` knows, per partition, the next offset the agent must be handed: the group's committed offset when
the partition arrives in a new generation, then one past the last record handed over. Records that start past
it leave a hole; `HoleReader` reads the hole's records back from the broker and the agent moderates and acks
them ahead of the batch, so the commit passes them only once their outputs are published. A hole the broker
holds no records for (transaction markers, a log start that retention moved) reads back empty."""

import asyncio
import logging
import time

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition

from consumer.core.pipeline import RawRecord
from consumer.kafka.config import client_config

log = logging.getLogger(__name__)


class HoleReader:
    """Reads a partition's offsets back from the broker, outside the group (assign, never subscribe), as the
    Faust consumer sees them (read_uncommitted). Blocking: called from a worker thread."""

    def __init__(self, bootstrap: str, group_id: str, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self._consumer = Consumer(client_config(bootstrap, {
            "group.id": group_id,  # for the group's committed offsets; assign() does not join the group
            "enable.auto.commit": False,
            "isolation.level": "read_uncommitted",
            "auto.offset.reset": "earliest",  # a hole below the log start reads from the log start
            "enable.partition.eof": True,
        }))

    def committed(self, topic: str, partition: int) -> int:
        """Where the group resumes this partition: its committed offset, else the log start."""
        [tp] = self._consumer.committed([TopicPartition(topic, partition)], timeout=self.timeout_s)
        if tp.offset != OFFSET_INVALID:
            return tp.offset
        low, _ = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=self.timeout_s)
        return low

    def read(self, topic: str, partition: int, start: int, end: int) -> list[RawRecord]:
        """The records at offsets [start, end). Raises KafkaException (infrastructure) if the broker does not
        answer within the timeout."""
        self._consumer.assign([TopicPartition(topic, partition, start)])
        records: list[RawRecord] = []
        deadline = time.monotonic() + self.timeout_s
        try:
            while True:
                if time.monotonic() > deadline:
                    raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"reading {topic}/{partition}@{start}"))
                message = self._consumer.poll(0.5)
                if message is None:
                    continue
                if message.error() is not None:
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        return records
                    raise KafkaException(message.error())
                if message.offset() >= end:
                    return records
                records.append(RawRecord(key=message.key(), value=message.value(), topic=topic,
                                         partition=partition, offset=message.offset()))
        finally:
            self._consumer.unassign()

    def close(self) -> None:
        self._consumer.close()


class HoleGuard:
    def __init__(self, reader: HoleReader) -> None:
        self.reader = reader
        self._next: dict[tuple[str, int], tuple[int, int]] = {}  # (topic, partition) -> (generation, next offset)
        self.records_read_back = 0

    async def skipped_before(self, records: list[RawRecord], generations: list[int]) -> list[RawRecord]:
        """The records Faust skipped ahead of `records` (each handed over in `generations[i]`), read back
        from the broker, in offset order per partition. Each call moves the expected offsets past `records`."""
        skipped: list[RawRecord] = []
        for record, generation in zip(records, generations, strict=True):
            key = (record.topic, record.partition)
            known = self._next.get(key)
            if known is not None and known[0] == generation:
                expected = known[1]
            else:  # a new generation: Faust resumes the partition at the group's committed offset
                expected = await asyncio.to_thread(self.reader.committed, *key)
            if record.offset > expected:
                found = await asyncio.to_thread(self.reader.read, *key, expected, record.offset)
                log.warning("faust skipped offsets of a partition; reading them back", extra={
                    "origin": f"{record.topic}/{record.partition}@{expected}", "hole_end": record.offset,
                    "generation": generation, "records": len(found)})
                skipped += found
                self.records_read_back += len(found)
            self._next[key] = (generation, max(expected, record.offset + 1))
        return skipped
