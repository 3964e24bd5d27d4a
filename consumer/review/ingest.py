"""Fill the review queue: input events give each meme's image reference and text, verdicts with decision
`review` put it in the queue. Offsets are committed after Redis has the records.

Replicas: every review page joins the consumer group `MEMEGUARD_REVIEW_GROUP_ID` (subscribe: the partitions
are split between them) and writes to the shared store, whose writes are idempotent by event id and safe
when an event's reference and its verdict are read by different replicas (consumer/review/store.py). A
Redis error is counted (`memeguard_review_store_errors_total`), logged, and the batch is read again: the
partitions are rewound to the batch's first offsets, nothing is committed past what Redis holds.

Every record is untrusted (anyone who can write the input or verdict topic): it is validated against its schema
(MemeEvent on the input topic, Verdict on the verdict topic, with ids within the event's bounds), and one that
does not fit (not JSON, a tombstone, deep nesting, a number out of range, a wrong type), or that fails on
anything but Redis, is skipped: counted in `counts` and `memeguard_review_ingest_records_total{result}`,
logged by position only (never its content), and committed past. Only a Redis error rewinds, so no record
can make the ingest read the same batch forever, crash it or stop it.

Memory budget (consumer/review/store.py, "Memory budget"). Before the store writes a reference or a waiting verdict
it checks that the write fits the budget (MEMEGUARD_REVIEW_MEMORY_BUDGET_BYTES). When it does not, the ingest
applies backpressure: the batch is cut at that record, the records before it are committed, the rest rewound, and
every partition this replica holds is paused (the consumer still polls, so it keeps its place in the group); the
store's `over_budget` mark makes every page replica say so. Nothing is skipped: once the keys' TTLs have freed space
(the store's count at or under RESUME_AT of the budget) the partitions resume from the first record not stored.
A single reference or verdict larger than the store's MAX_ENTRY_BYTES is the record's fault: skipped and counted
(`oversize`), like an invalid record. Pauses are counted in `memeguard_review_ingest_pauses_total`. A rebuild
charges what it writes but is never refused: it restores what the ingest had already admitted.

Rebuild. Redis holds the queue, but the topics hold everything it is made of: `rebuild` reads the reviews topic
(the decisions that stand: reviews not retracted, verified as `dataset build` verifies them, schemas/review.py),
restores those decisions, then reads the verdicts topic and the input topic from the beginning through the same
`take_record` as the ingest: the undecided `review` verdicts become cards again, the decided ones come back
decided (not in the queue). The page's ingest runs it by itself when the store has no `built` mark (a Redis
that lost its data, or a first start), and `memeguard review --rebuild` runs it before the page starts. It is
idempotent: running it on a full store changes nothing but the order of the recent decisions."""

import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pydantic_core
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import Counter as PromCounter
from redis.exceptions import DataError

from consumer.core.redis_client import REDIS_ERRORS
from consumer.kafka.config import client_config
from consumer.kafka.topic_reader import read_topic
from consumer.kafka.topics import is_loopback
from consumer.review.store import DEFAULT_BUDGET_BYTES, STORE_BUDGET, EntryTooLarge, OverBudget, ReviewStore
from schemas import Decision, MemeEvent, Verdict
from schemas.review import MAX_REVIEW_BYTES, REVIEW_CONTEXT, REVIEW_RECORD, RetractionMessage
from schemas.signing import signature_refusal

log = logging.getLogger(__name__)

INGEST_RECORDS = PromCounter("memeguard_review_ingest_records", "Records the review ingest read, by outcome: "
                             "queued (a reference or a review verdict stored), ignored (valid, nothing to "
                             "queue), invalid (does not fit the schema), oversize (one entry larger than the "
                             "store takes), failed (a non-Redis error).", ["result"])
INGEST_PAUSES = PromCounter("memeguard_review_ingest_pauses", "Times the review ingest paused its partitions "
                            "because the review store reached its memory budget (nothing skipped).")
MAX_ID_CHARS = 200  # the input event's bound on event ids; a verdict naming a longer one judged no event
RESULTS = ("queued", "ignored", "invalid", "oversize", "failed")
RESUME_AT = 0.9  # paused at the budget, resumed at this share of it: no pause and resume for every key that expires

RETRY_AFTER_S = 1.0  # pause after a failed batch (Redis down) before it is read again


class ReviewIngest:
    def __init__(self, bootstrap: str, group_id: str, input_topic: str, verdict_topic: str, store: ReviewStore,
                 budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self.store = store
        self.budget_bytes = budget_bytes
        STORE_BUDGET.set(budget_bytes)
        self.over_budget = False  # paused until the store's count is back under RESUME_AT of the budget
        self.pauses = 0
        self.input_topic, self.verdict_topic = input_topic, verdict_topic
        self.consumer = Consumer(client_config(bootstrap, {
            "group.id": group_id, "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "fetch.message.max.bytes": 16 * 1024 * 1024}))
        meta = self.consumer.list_topics(timeout=10).topics
        self.assigned = threading.Event()  # the group gave this replica its partitions (perhaps none)
        # (topic, partition) this replica holds, kept by the callbacks: other threads read this, never call
        # the consumer (consumer.assignment() from another thread can wait on a rebalance it is part of)
        self.partitions: set[tuple[str, int]] = set()
        topics = [t for t in (input_topic, verdict_topic) if t in meta]
        if topics:
            # not `self` in the callbacks: the consumer would keep this object alive
            assigned, held = self.assigned, self.partitions

            def on_assign(_consumer: Consumer, parts: list[TopicPartition]) -> None:
                held.update((tp.topic, tp.partition) for tp in parts)
                assigned.set()

            def on_revoke(_consumer: Consumer, parts: list[TopicPartition]) -> None:
                held.difference_update((tp.topic, tp.partition) for tp in parts)

            self.consumer.subscribe(topics, on_assign=on_assign, on_revoke=on_revoke)
        else:
            self.assigned.set()  # nothing to read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counts: Counter[str] = Counter()  # records by outcome (RESULTS)
        # The page's: how to fill the queue from the topics when the store has no `built` mark (None: never).
        self.rebuild: Callable[[], object] | None = None

    @classmethod
    def for_page(cls, settings: Any, store: ReviewStore, rebuild_now: bool = False) -> "ReviewIngest":
        """The page's ingest (`memeguard review`; settings: ReviewSettings): it rebuilds the queue from the topics
        whenever the store lost it (no `built` mark), and at once, before returning, with `rebuild_now`
        (`memeguard review --rebuild`)."""
        key = settings.review_signing_key.get_secret_value().encode() if settings.review_signing_key else None
        ingest = cls(settings.kafka_bootstrap, settings.review_group_id, settings.input_topic, settings.output_topic,
                     store, settings.review_memory_budget_bytes)
        ingest.rebuild = functools.partial(rebuild, store, settings.kafka_bootstrap, settings.input_topic,
                                           settings.output_topic, settings.reviews_topic, key)
        if rebuild_now:
            ingest.rebuild()
        return ingest

    def _take(self, topic: str, value: bytes | None, partition: int = -1, offset: int = -1) -> str:
        """Store what one record holds; its outcome (RESULTS). Raises only what the store raises."""
        return take_record(self.store, self.input_topic, topic, value, partition, offset, budget=self.budget_bytes)

    def poll_once(self, timeout_s: float = 0.5, max_records: int = 200) -> int:
        """Read and store one batch; the number of records taken (0 while paused for the budget)."""
        if self.over_budget and not self._resume():
            # Paused partitions give nothing; one assigned meanwhile (a rebalance) is paused here too.
            self._hold([m for m in self.consumer.consume(max_records, timeout_s) if m.error() is None])
            return 0
        messages = [m for m in self.consumer.consume(max_records, timeout_s) if m.error() is None]
        done: list[Any] = []
        for i, m in enumerate(messages):
            try:
                result = self._take(m.topic(), m.value(), m.partition(), m.offset())
            except OverBudget as e:
                if not self.over_budget:
                    log.warning("review store over its memory budget (%s): review ingest paused, nothing skipped", e)
                self._hold(messages[i:])
                break
            except REDIS_ERRORS as e:
                if isinstance(e, DataError):  # a value redis-py refuses to send: the record's, not Redis's
                    result = "failed"
                else:
                    self._rewind(messages)  # else the next poll would go on after the records Redis never got
                    raise
            except Exception:  # noqa: BLE001 (anything else belongs to this record: skip it, never retry it)
                result = "failed"
            done.append(m)
            self.counts[result] += 1
            INGEST_RECORDS.labels(result).inc()
            if result in ("invalid", "oversize", "failed"):
                log.warning("review ingest skipped a record", extra={  # where, never the record's content
                    "result": result, "topic": m.topic(), "partition": m.partition(), "offset": m.offset()})
        if done:  # exactly what Redis holds: a batch cut by the budget commits its first part only
            after: dict[tuple[str, int], int] = {}
            for m in done:
                after[(m.topic(), m.partition())] = max(after.get((m.topic(), m.partition()), 0), m.offset() + 1)
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in after.items()], asynchronous=False)
        return len(done)

    def _hold(self, messages: list) -> None:
        """Backpressure: rewind `messages` (not stored) and pause every partition this replica holds."""
        self._rewind(messages)
        held = self.consumer.assignment()
        if held:
            self.consumer.pause(held)
        if not self.over_budget:
            self.over_budget = True
            self.pauses += 1
            INGEST_PAUSES.inc()
        self.store.mark_over_budget()  # every page replica says so; refreshed while paused, expires if we die

    def _resume(self) -> bool:
        """Resume the paused partitions once the store's count is back under RESUME_AT of the budget."""
        held = self.store.usage()
        if held > RESUME_AT * self.budget_bytes:
            return False
        assigned = self.consumer.assignment()
        if assigned:
            self.consumer.resume(assigned)
        self.over_budget = False
        self.store.clear_over_budget()
        log.info("review store back under its memory budget (%d of %d bytes): review ingest resumed", held,
                 self.budget_bytes)
        return True

    def _rewind(self, messages: list) -> None:
        first: dict[tuple[str, int], int] = {}
        for m in messages:
            key = (m.topic(), m.partition())
            first[key] = min(first.get(key, m.offset()), m.offset())
        for (topic, partition), offset in first.items():
            self.consumer.seek(TopicPartition(topic, partition, offset))

    def drain(self, idle_polls: int = 3, timeout_s: float = 60.0) -> int:
        """Read to the end every partition had when called, then until `idle_polls` polls in a row bring
        nothing, or `timeout_s`; then leave the group (for tests and scripts: one drain per instance, so the
        next drain in the same group gets every partition at once). Idle polls alone are not enough: on a
        fresh broker the first fetch waits for the group coordinator."""
        deadline = time.monotonic() + timeout_s
        while not self.assigned.is_set() and time.monotonic() < deadline:  # joining the group
            self.poll_once(timeout_s=0.1)
        assigned = self.consumer.assignment()
        ends = {(tp.topic, tp.partition): self.consumer.get_watermark_offsets(tp, timeout=10) for tp in assigned}
        total, idle = 0, 0
        while time.monotonic() < deadline:
            n = self.poll_once()
            total += n
            idle = 0 if n else idle + 1
            if idle >= idle_polls and self._reached(assigned, ends):
                break
        self.consumer.close()
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
                    if self.rebuild is not None and not self.store.built():  # Redis lost the queue
                        log.warning("the review store holds no queue (Redis restarted without persistence, or "
                                    "a first start): rebuilding it from the topics")
                        self.rebuild()
                    self.poll_once()
                except Exception as e:  # keep the page alive; the batch was rewound, the next poll reads it again
                    log.warning("review ingest failed (%s: %s); reading the batch again in %.1fs",
                                type(e).__name__, e, RETRY_AFTER_S)
                    self._stop.wait(RETRY_AFTER_S)
            self.consumer.close()

        self._thread = threading.Thread(target=loop, name="review-ingest", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def take_record(store: ReviewStore, input_topic: str, topic: str, value: bytes | None, partition: int = -1,
                offset: int = -1, only: set[str] | None = None, budget: int | None = None) -> str:
    """Store what one record holds; its outcome (RESULTS). Raises only what the store raises. `only`: store input
    events of these event ids only (a rebuild needs the references of the review verdicts, not every event's).
    `budget`: the store's memory budget (OverBudget when the record does not fit; None: never refused)."""
    if value is None:  # a tombstone
        return "invalid"
    if topic == input_topic:
        try:  # pydantic's JSON parser: bounded nesting, strict UTF-8, no lone surrogates
            event = MemeEvent.model_validate_json(value)
        except (ValueError, RecursionError):
            return "invalid"  # the worker dead-letters it; nothing to review
        if only is not None and event.event_id not in only:
            return "ignored"
        ref: dict = {"text": event.text}
        if event.image_url is not None:
            ref["image_url"] = event.image_url
        elif partition >= 0:
            # Where the bytes are, not the bytes (up to the worker's event cap each): the page reads the record
            # back for the image, so the Redis the verdict cache and the breaker share never holds them.
            ref["record"] = [topic, partition, offset]
        try:
            store.put_ref(event.event_id, ref, budget)
        except EntryTooLarge:
            return "oversize"
        return "queued"
    v = review_verdict(value)
    if v is None:
        return "invalid"
    if v.decision != Decision.REVIEW:
        return "ignored"
    try:
        store.put_verdict(v, budget)
    except EntryTooLarge:
        return "oversize"
    return "queued"


def review_verdict(value: bytes | None) -> Verdict | None:
    """The verdict in a record of the verdicts topic, or None when it does not fit."""
    if value is None:
        return None
    try:
        v = Verdict.model_validate_json(value)
        v.created_at.timestamp()  # the queue's score: a time at the end of the calendar overflows
    except (ValueError, RecursionError, OverflowError):
        return None
    return v if 0 < len(v.event_id) <= MAX_ID_CHARS else None


def standing_decisions(bootstrap: str, reviews_topic: str, signing_key: bytes | None,
                       timeout_s: float = 300.0) -> dict[str, dict[str, Any]]:
    """Per content hash, the latest review (by its signed `reviewed_at`) that no retraction cancels: the message
    as the page published it, without its signature. A record counts only as `dataset build` counts it
    (consumer/learning/reviews.py, rules 1 and 3): it fits schemas/review.py and verifies with the signing key
    (without a key, unsigned records only from a loopback broker); a retraction cancels a review of the same
    moderator and content. Whatever else the topic holds is skipped, never an error."""
    allow_unsigned = signing_key is None and is_loopback(bootstrap)
    reviews: dict[str, tuple[dict[str, Any], Any]] = {}
    retractions: list[RetractionMessage] = []
    skipped = 0
    for record in read_topic(bootstrap, reviews_topic, timeout_s=timeout_s):
        doc = _verified_review(reviews_topic, record.value, signing_key, allow_unsigned)
        if doc is None:
            skipped += 1
            continue
        message = REVIEW_RECORD.validate_python(doc)
        if isinstance(message, RetractionMessage):
            retractions.append(message)
        else:
            reviews.setdefault(message.review_id, (doc, message))  # a copy of a signed review is the same review
    cancelled = {r.retracts for r in retractions if r.retracts in reviews
                 and (reviews[r.retracts][1].moderator, reviews[r.retracts][1].content_hash)
                 == (r.moderator, r.content_hash)}
    standing: dict[str, tuple[dict[str, Any], Any]] = {}
    for review_id, (doc, message) in reviews.items():
        if review_id in cancelled:
            continue
        held = standing.get(message.content_hash)
        if held is None or message.reviewed_at > held[1].reviewed_at:
            standing[message.content_hash] = (doc, message)
    if skipped:
        log.warning("review rebuild skipped %d record(s) of %s that do not verify", skipped, reviews_topic)
    return {content: doc for content, (doc, _) in standing.items()}


def _verified_review(topic: str, value: bytes | None, key: bytes | None, allow_unsigned: bool
                     ) -> dict[str, Any] | None:
    """The message of a reviews-topic record (signature removed) when it verifies and fits the schema."""
    if value is None or len(value) > MAX_REVIEW_BYTES:
        return None
    try:
        doc = pydantic_core.from_json(value)  # bounded nesting, strict UTF-8, no lone surrogates
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    if signature_refusal(doc, key, allow_unsigned, REVIEW_CONTEXT, topic):
        return None
    try:
        REVIEW_RECORD.validate_python(doc)
    except (ValueError, RecursionError):
        return None
    return doc


def rebuild(store: ReviewStore, bootstrap: str, input_topic: str, verdict_topic: str, reviews_topic: str,
            signing_key: bytes | None, timeout_s: float = 300.0) -> Counter[str]:
    """Fill the queue again from the topics (the module's docstring, "Rebuild"), then mark the store built.
    Returns counts: decided (decisions restored), verdicts (review verdicts read), references (their events)."""
    counts: Counter[str] = Counter()
    for decision in standing_decisions(bootstrap, reviews_topic, signing_key, timeout_s).values():
        store.restore_decision(decision)  # first: a decided meme never enters the queue, even for a moment
        counts["decided"] += 1
    needed: set[str] = set()

    def verdict(record: Any) -> bool:  # stored while reading; nothing kept in memory
        v = review_verdict(record.value)
        if v is not None and v.decision == Decision.REVIEW:
            try:  # charged, never refused: a rebuild restores what the ingest had already stored
                store.put_verdict(v)
            except EntryTooLarge:
                return False
            needed.add(v.event_id)
            counts["verdicts"] += 1
        return False

    def reference(record: Any) -> bool:
        if take_record(store, input_topic, input_topic, record.value, record.partition, record.offset,
                       only=needed) == "queued":
            counts["references"] += 1
        return False

    read_topic(bootstrap, verdict_topic, timeout_s=timeout_s, keep=verdict)
    if needed:
        read_topic(bootstrap, input_topic, timeout_s=timeout_s, keep=reference)
    store.mark_built()
    log.info("review queue rebuilt from %s, %s and %s: %d decision(s) restored, %d review verdict(s), %d "
             "reference(s); %d card(s) waiting", reviews_topic, verdict_topic, input_topic, counts["decided"],
             counts["verdicts"], counts["references"], store.pending_count())
    return counts
