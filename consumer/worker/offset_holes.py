"""The Faust engine's guard against offset holes: records faust-streaming never hands its agent.

Around a rebalance faust-streaming can skip records of a partition: flow resumes before the partitions are
sought to their committed offsets, and a prefetched batch moves its read offset past records it then drops
as already read (faust-streaming#216, #221). It takes such a hole for transaction markers, fills it and
commits past it. Two CI runs lost records, by all the evidence that way (the race could not be reproduced on
demand): 408 of 1,500 in a rebalance, and in a restart after a SIGKILL a worker went idle with records never
moderated (docs/kafka.md).

`HoleGuard` knows, per partition, the next offset the agent must be handed: the group's committed offset when
the partition arrives in a new generation, then one past the last record handed over. Records that start past
it leave a hole; `HoleReader` reads the hole's records back from the broker and the agent moderates and acks
them ahead of the batch, so the commit passes them only once their outputs are published. A hole the broker
holds no records for (transaction markers, a log start that retention moved) reads back empty. A hole with no
record after it (Faust dropped a partition's last records) is found by `skipped_at_tail` once the agent has
been handed nothing for a while."""

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
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                [tp] = self._consumer.committed([TopicPartition(topic, partition)],
                                                timeout=max(0.1, deadline - time.monotonic()))
                break
            except KafkaException as e:  # e.g. NOT_COORDINATOR while the group's coordinator moves or loads
                if not e.args[0].retriable() or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        if tp.offset != OFFSET_INVALID:
            return tp.offset
        low, _ = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=self.timeout_s)
        return low

    def end(self, topic: str, partition: int) -> int:
        """The offset the next record produced to the partition gets (its high watermark)."""
        return self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=self.timeout_s)[1]

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
        self._tail_seen: dict[tuple[str, int], int] = {}  # partitions whose log ran past the next offset last check
        self.records_read_back = 0

    async def skipped_before(self, records: list[RawRecord], generations: list[int]) -> list[RawRecord]:
        """The records Faust skipped ahead of `records` (each handed over in `generations[i]`), read back
        from the broker, in offset order per partition. Each call moves the expected offsets past `records`."""
        skipped: list[RawRecord] = []
        for record, generation in zip(records, generations, strict=True):
            key = (record.topic, record.partition)
            expected = await self._expected(key, generation)
            if record.offset > expected:
                skipped += await self._read_back(key, generation, expected, record.offset)
            self._next[key] = (generation, max(expected, record.offset + 1))
        return skipped

    async def skipped_at_tail(self, partitions: list[tuple[str, int]], generation: int) -> list[RawRecord]:
        """For an agent handed nothing for a while: the records of `partitions` (assigned in `generation`) that
        Faust skipped with no record after them for `skipped_before` to notice. A partition counts only once
        its log has run past the next offset at two checks in a row, so a record just produced is left to
        Faust."""
        skipped: list[RawRecord] = []
        for key in partitions:
            expected = await self._expected(key, generation)
            end = await asyncio.to_thread(self.reader.end, *key)
            if end <= expected:
                self._tail_seen.pop(key, None)
            elif self._tail_seen.get(key) != expected:
                self._tail_seen[key] = expected
            else:
                del self._tail_seen[key]
                skipped += await self._read_back(key, generation, expected, end)
                self._next[key] = (generation, end)
        return skipped

    async def _expected(self, key: tuple[str, int], generation: int) -> int:
        known = self._next.get(key)
        if known is not None and known[0] == generation:
            return known[1]
        # A new generation: Faust resumes the partition at the group's committed offset.
        expected = await asyncio.to_thread(self.reader.committed, *key)
        self._next[key] = (generation, expected)
        return expected

    async def _read_back(self, key: tuple[str, int], generation: int, start: int, end: int) -> list[RawRecord]:
        found = await asyncio.to_thread(self.reader.read, *key, start, end)
        # A hole of transaction markers (or below a log start that retention moved) holds no records.
        (log.warning if found else log.info)("faust skipped offsets of a partition; reading them back", extra={
            "origin": f"{key[0]}/{key[1]}@{start}", "hole_end": end, "generation": generation, "records": len(found)})
        self.records_read_back += len(found)
        return found
