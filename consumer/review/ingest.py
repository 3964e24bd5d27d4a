"""Fill the review queue: input events give each meme's image reference and text, verdicts with decision
`review` put it in the queue. Offsets are committed after Redis has the records (assign() with the
review group's committed offsets: no group join, which Tansu makes slow)."""

import json
import logging
import threading

from confluent_kafka import OFFSET_STORED, Consumer, TopicPartition

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
        self.consumer.assign([TopicPartition(t, p, OFFSET_STORED) for t in (input_topic, verdict_topic)
                              if t in meta for p in meta[t].partitions])
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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

    def drain(self, idle_polls: int = 3) -> int:
        """Read until `idle_polls` polls in a row bring nothing (for tests and scripts)."""
        total, idle = 0, 0
        while idle < idle_polls:
            n = self.poll_once()
            total += n
            idle = 0 if n else idle + 1
        return total

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
