"""Fill the review queue: input events give each meme's image reference and text, verdicts with decision
`review` put it in the queue. Offsets are committed after Redis has the records (assign() with the
review group's committed offsets: no group join, which Tansu makes slow)."""

import json
import logging
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from consumer.errors import ConfigError
from consumer.kafka_config import client_config
from consumer.review.store import MAX_INLINE_IMAGE_CHARS, ReviewStore
from schemas import Decision, Verdict

log = logging.getLogger(__name__)


class ReviewIngest:
    def __init__(self, bootstrap: str, group_id: str, input_topic: str, verdict_topic: str, store: ReviewStore) -> None:
        self.store = store
        self.input_topic, self.verdict_topic = input_topic, verdict_topic
        self.consumer = Consumer(client_config(bootstrap, {
            "group.id": group_id, "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "fetch.message.max.bytes": 16 * 1024 * 1024}))
        meta = self.consumer.list_topics(timeout=10).topics
        wanted = [TopicPartition(t, p) for t in (input_topic, verdict_topic) if t in meta for p in meta[t].partitions]
        # The committed offsets are asked for here, with retries, rather than assigned as OFFSET_STORED: on a
        # fresh Apache Kafka the first OffsetFetch can fail (NOT_COORDINATOR while __consumer_offsets is being
        # created) and librdkafka then left the partitions pending, fetching nothing.
        self.consumer.assign([TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                              for tp in self._committed(wanted)])
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _committed(self, partitions: list[TopicPartition], timeout_s: float = 60.0) -> list[TopicPartition]:
        if not partitions:
            return []
        deadline, delay = time.monotonic() + timeout_s, 0.2
        while True:
            try:
                got = self.consumer.committed(partitions, timeout=10)
                failed = [tp for tp in got if tp.error is not None]
                if not failed:
                    return got
                problem: object = failed[0].error
            except KafkaException as e:
                problem = e
            if time.monotonic() > deadline:
                raise ConfigError(f"The review group's committed offsets stayed unavailable for {timeout_s:.0f}s: "
                                  f"{problem}")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _take(self, topic: str, value: bytes) -> None:
        try:
            payload = json.loads(value)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return  # the worker dead-letters unreadable events; nothing to review
        if not isinstance(payload, dict) or not isinstance(payload.get("event_id"), str):
            return
        if topic == self.input_topic:
            ref = {"text": payload.get("text") if isinstance(payload.get("text"), str) else None}
            if isinstance(payload.get("image_url"), str):
                ref["image_url"] = payload["image_url"]
            elif isinstance(payload.get("image_b64"), str) and len(payload["image_b64"]) <= MAX_INLINE_IMAGE_CHARS:
                ref["image_b64"] = payload["image_b64"]
            self.store.put_ref(payload["event_id"], ref)
        else:
            try:
                v = Verdict.model_validate(payload)
            except ValueError:
                return
            if v.decision == Decision.REVIEW:
                self.store.put_verdict(v)

    def poll_once(self, timeout_s: float = 0.5, max_records: int = 200) -> int:
        messages = [m for m in self.consumer.consume(max_records, timeout_s) if m.error() is None]
        for m in messages:
            self._take(m.topic(), m.value())
        if messages:
            self.consumer.commit(asynchronous=False)
        return len(messages)

    def drain(self, idle_polls: int = 3, timeout_s: float = 60.0) -> int:
        """Read to the end every partition had when called, then until `idle_polls` polls in a row bring
        nothing, or `timeout_s` (for tests and scripts). Idle polls alone are not enough: on a fresh broker
        the first fetch waits for the group coordinator."""
        assigned = self.consumer.assignment()
        ends = {(tp.topic, tp.partition): self.consumer.get_watermark_offsets(tp, timeout=10) for tp in assigned}
        deadline = time.monotonic() + timeout_s
        total, idle = 0, 0
        while time.monotonic() < deadline:
            n = self.poll_once()
            total += n
            idle = 0 if n else idle + 1
            if idle >= idle_polls and self._reached(assigned, ends):
                break
        return total

    def _reached(self, assigned: list[TopicPartition], ends: dict[tuple[str, int], tuple[int, int]]) -> bool:
        positions = self.consumer.position(assigned)
        committed = self.consumer.committed(assigned, timeout=10)
        for pos, com in zip(positions, committed, strict=True):
            low, high = ends[(pos.topic, pos.partition)]
            if high > low and max(pos.offset, com.offset) < high:  # offsets < 0: nothing read or committed yet
                return False
        return True

    def start(self) -> "ReviewIngest":
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.poll_once()
                except Exception:  # keep the page alive; the next poll retries from the committed offsets
                    log.exception("review ingest failed; retrying")
                    self._stop.wait(2.0)
            self.consumer.close()

        self._thread = threading.Thread(target=loop, name="review-ingest", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
