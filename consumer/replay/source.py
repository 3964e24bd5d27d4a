"""Read a topic from its beginning to the end offsets seen at start, without touching any group's offsets.

End offsets, two routes:
- `list_offsets` (Apache Kafka and any other broker): ListOffsets(LATEST) per partition at start
  (`get_watermark_offsets(cached=False)`; with read_committed, the last stable offset).
- `high_watermark` (Tansu only): Tansu answers ListOffsets(LATEST) wrongly (1 for a partition that holds 5
  records), so the end of each partition is the high watermark in the first fetch response for it
  (librdkafka's cached watermark, `get_watermark_offsets(cached=True)`), which Tansu reports correctly. A
  partition that sends no fetch response with a watermark within `probe_s` counts as empty, with a warning.
`auto` (the default) takes `high_watermark` when the cluster id in the metadata is Tansu's (`tansu_cluster`, the
id Tansu runs with unless given `--cluster-id`), `list_offsets` otherwise. Records at or past the end are not
replayed, so a topic that keeps growing still ends.

Partitions are `assign()`ed, never subscribed: no group join, no commit, so production offsets of every
group stay where they are.
"""

import logging
import time
import uuid
from collections.abc import Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from consumer.core.pipeline import RawRecord
from consumer.errors import ConfigError
from consumer.kafka.config import client_config

log = logging.getLogger(__name__)


END_OFFSET_ROUTES = ("auto", "list_offsets", "high_watermark")


def lists_end_offsets_correctly(cluster_id: str | None) -> bool:
    """False for Tansu (its ListOffsets(LATEST) is wrong), True for Apache Kafka and everything else."""
    return not (cluster_id or "").startswith("tansu")


class TopicSnapshot:
    def __init__(self, bootstrap: str, topic: str, probe_s: float = 10.0, idle_timeout_s: float = 60.0,
                 end_offsets: str = "auto") -> None:
        if end_offsets not in END_OFFSET_ROUTES:
            raise ConfigError(f"end_offsets={end_offsets!r}: expected one of {', '.join(END_OFFSET_ROUTES)}")
        self.topic = topic
        self.probe_s = probe_s
        self.idle_timeout_s = idle_timeout_s
        # librdkafka wants a group id even for assign(); a throwaway one guarantees nothing is ever shared.
        self.consumer = Consumer(client_config(bootstrap, {
            "group.id": f"memeguard-replay-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False, "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
            "fetch.message.max.bytes": 16 * 1024 * 1024,
        }))
        metadata = self.consumer.list_topics(topic, timeout=10)
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            self.consumer.close()
            raise ConfigError(f"Topic {topic!r} does not exist on {bootstrap}. Produce to it first "
                              "(`memeguard produce --labels --topic ...`) or pass the right --topic.")
        self.partitions = sorted(meta.partitions)
        self.ends: dict[int, int] = {}
        self.next_offset: dict[int, int] = dict.fromkeys(self.partitions, 0)
        if end_offsets == "auto":
            end_offsets = "list_offsets" if lists_end_offsets_correctly(metadata.cluster_id) else "high_watermark"
        self.end_source = end_offsets
        if end_offsets == "list_offsets":
            for p in self.partitions:
                try:
                    _, self.ends[p] = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10,
                                                                          cached=False)
                except KafkaException as e:
                    self.consumer.close()
                    raise ConfigError(f"Could not read the end offset of {topic}[{p}] from {bootstrap}: {e}") from e
        log.info("replaying %s to its end offsets (%s): %s", topic, end_offsets, self.ends or "from first fetches")

    @property
    def total(self) -> int | None:
        """Records to replay, once every partition's end is known."""
        if len(self.ends) < len(self.partitions):
            return None
        return sum(self.ends.values())

    def _probe_ends(self, started: float) -> None:
        for p in self.partitions:
            if p in self.ends:
                continue
            _, high = self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)
            if high >= 0:
                self.ends[p] = high
            elif time.monotonic() - started > self.probe_s:
                log.warning("no high watermark for %s[%d] after %.0fs; treating it as empty", self.topic, p,
                            self.probe_s)
                self.ends[p] = self.next_offset[p]

    def _done(self) -> bool:
        return len(self.ends) == len(self.partitions) and all(
            self.next_offset[p] >= end for p, end in self.ends.items())

    def batches(self, max_batch: int) -> Iterator[list[RawRecord]]:
        self.consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in self.partitions])
        started = last_record = time.monotonic()
        try:
            while True:
                messages = self.consumer.consume(num_messages=max_batch, timeout=0.5)
                self._probe_ends(started)
                batch = []
                for m in messages:
                    if m.error() is not None:
                        continue
                    p, offset = m.partition(), m.offset()
                    self.next_offset[p] = max(self.next_offset[p], offset + 1)
                    if offset < self.ends.get(p, offset + 1):  # past the end seen at start: not ours
                        batch.append(RawRecord(key=m.key(), value=m.value(), topic=m.topic(), partition=p,
                                               offset=offset))
                if batch:
                    last_record = time.monotonic()
                    yield batch
                if self._done():
                    return
                if time.monotonic() - last_record > self.idle_timeout_s:
                    missing = {p: (self.next_offset[p], end) for p, end in self.ends.items()
                               if self.next_offset[p] < end}
                    log.warning("no records for %.0fs before the end offsets were reached (%s); stopping",
                                self.idle_timeout_s, missing)
                    return
        finally:
            self.consumer.close()
