"""The review queue in Redis: items waiting for a moderator and the decisions taken, kept across restarts.

One card per content hash: the first event of a content that needs review becomes its card; later events of
the same content (reposts: same image bytes and normalised text, new event ids) are attached to that card as
duplicates instead of queueing a second card. A decision on the card is one review message that lists them.
A repost that arrives after the card was decided is attached too (shown on the page) but publishes nothing:
a review message carries the `content_hash`, and the decision applies to every post of that content (label
builders and enforcement join on it). Undo puts the card, with all its reposts, back in the queue.

Keys (all under `review:`; `{…}` is a Redis Cluster hash tag, the part that picks the slot):
- `ref:{event_id}` (TTL): how to load the meme of an input event: its image URL, or for an inline image the
  input record's topic, partition and offset (never the bytes), and its text. Written for every input event,
  because the verdict that says `review` comes later, on another topic.
- `waiting:{event_id}` (TTL): a review verdict that read before its event's reference. A reference and its
  verdict share the event's slot: each side writes itself and reads the other in one MULTI, so whichever
  comes second (on whichever ingest replica) queues the card, exactly once.
- Under `{review}:` (one slot: the queue's operations are transactions and Lua scripts over several of these
  keys; the queue is human-sized, its volume is in the per-event references above):
  `item:ID`: verdict + reference of a card; `queue`: pending card ids scored by verdict time.
  `card:HASH`: the event id of the content's card. `alias:ID`: a repost's card.
  `dups:ID` (the first MAX_DUPLICATES reposts) and `dupcount:ID` (all of them).
  `decision:ID`: the moderator's decision (the published review message), so a refresh or a restart
  shows it; `recent`: the latest decided cards; `last:USER`: that moderator's latest decisions, for undo.
  `claim:ID` (30 s): one request at a time publishes for a card.
  `built`: set once the queue was filled from the topics (ReviewIngest, or `rebuild` in ingest.py). A Redis
  that lost its data (restarted without persistence, flushed) has no `built`, and the page rebuilds the queue
  from the verdicts and reviews topics (consumer/review/ingest.py, `rebuild`).
  `session:SID` (the session TTL): the moderator of a live sign-in; logout deletes it, so a copied session
  cookie dies with it on every replica (the cookie's signature alone cannot be taken back).

Memory budget (issue 27, item 7; docs/operations.md, "Review store memory"). Whoever can write the input topic
decides how many references there are, and the store may share its Redis with the verdict cache and the crash-loop
breaker. So the store counts the bytes it writes, and refuses a write that would take it past a budget:
- `{review}:bytes:B`: the bytes of references and waiting verdicts written in time bucket B (BUCKET_S wide),
  expiring when the last key written in it has expired (end of B + the keys' TTL): the sum of the live buckets
  is what those keys can still hold, never less (a key overwritten or deleted early stays counted until its
  bucket expires: the count errs high, never low).
- `{review}:bytes:cards`: the bytes of cards (`item:`), repost aliases and duplicate entries, which have no TTL:
  charged once, when created (inside ADD_SCRIPT and `_attach`), never refunded, since they are never deleted.
The size charged for a key is its name, its value and KEY_OVERHEAD (what Redis spends per string key with a TTL;
tests/test_review_budget.py checks the count against `MEMORY USAGE`). Why a counter, not Redis's own figures:
`INFO memory` is the whole Redis (with a shared Redis the verdict cache's growth would stop the review ingest,
and the review store's would not be told apart), and `MEMORY USAGE` over SCAN walks every key of the cache too.
RESERVE_SCRIPT checks and charges in one step, so replicas sharing the store cannot overshoot together. A write
that would pass the budget raises OverBudget before anything is written (the ingest pauses, consumer/review/
ingest.py); one entry larger than MAX_ENTRY_BYTES raises EntryTooLarge (the ingest skips and counts it). Gauges:
`memeguard_review_store_bytes` (as last read) and `memeguard_review_store_budget_bytes`.

Every Redis failure is counted in `memeguard_review_store_errors_total{op}` and raised to the caller (the
page answers 503 "degraded: Redis is unreachable, decisions are paused", the ingest logs it and reads the
records again): nothing is dropped silently.
"""

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge

from consumer.core.redis_client import REDIS_ERRORS, hash_tag, sync_client
from schemas import Verdict

REF_TTL_S = 24 * 3600
MAX_DUPLICATES = 1000  # reposts listed per card (and per review message); `dupcount` counts all of them
UNDO_DEPTH = 20  # decisions per moderator that `undo` can walk back, newest first

STORE_ERRORS = Counter("memeguard_review_store_errors", "Review store operations that failed on Redis.", ["op"])
STORE_BYTES = Gauge("memeguard_review_store_bytes", "Bytes the review store counts as held in Redis (last read).")
STORE_BUDGET = Gauge("memeguard_review_store_budget_bytes", "The review store's memory budget in bytes.")

DEFAULT_BUDGET_BYTES = 256 * 1024 * 1024  # MEMEGUARD_REVIEW_MEMORY_BUDGET_BYTES
BUCKET_S = 3600  # width of a byte-count bucket; space frees at most this long after its keys expired
# Redis's own cost of one string key with a TTL beyond its name and value as allocated (dict entry, object,
# the expires entry): Redis 7.0's `MEMORY USAGE` puts it at 56-72 bytes for the keys stored here.
KEY_OVERHEAD = 80
# Largest single entry (a reference or a waiting verdict): a text of MAX_TEXT_CHARS written as JSON escapes
# (\uXXXX, 12 bytes for a character outside the BMP) is 120 KB; a longer image URL or verdict is refused.
MAX_ENTRY_BYTES = 256 * 1024


class OverBudget(Exception):
    """The write would take the store past its memory budget; nothing was written."""

    def __init__(self, held: int, budget: int) -> None:
        super().__init__(f"the review store holds {held} bytes of its {budget}-byte budget")
        self.held, self.budget = held, budget


class EntryTooLarge(ValueError):
    """One reference or verdict larger than MAX_ENTRY_BYTES: the record's, refused for good."""


# KEYS: the live byte buckets, newest first, then the cards' counter (one slot). ARGV: bytes to charge, budget
# (-1: none), the newest bucket's expiry (unix seconds). Returns {1, held after} or {0, held now}.
RESERVE_SCRIPT = """
local held = 0
for i = 1, #KEYS do held = held + tonumber(redis.call('GET', KEYS[i]) or '0') end
local n = tonumber(ARGV[1])
local budget = tonumber(ARGV[2])
if budget >= 0 and held + n > budget then return {0, held} end
redis.call('INCRBY', KEYS[1], n)
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return {1, held + n}
"""


def allocated(n: int) -> int:
    """What jemalloc (Redis's allocator) gives for n bytes: its size classes are 4 per power of two, so a large
    value costs up to 25% more than its length (a 120,226-byte string takes 131,072)."""
    if n <= 16:
        return 16
    step = max(16, 1 << ((n - 1).bit_length() - 3))
    return -(-n // step) * step


def charge(key: str, value: str | bytes) -> int:
    """The bytes a string key with a TTL costs Redis: its name and value as allocated (with their string headers),
    and KEY_OVERHEAD. Never less than `MEMORY USAGE` reports for it (tests/test_review_budget.py)."""
    data = value.encode() if isinstance(value, str) else value
    return allocated(len(key.encode()) + 16) + allocated(len(data) + 16) + KEY_OVERHEAD

# Queue a card unless its content already has one or it was decided. KEYS: card:HASH, item:ID, queue,
# decision:ID, bytes:cards (one slot); ARGV: event id, item JSON, score, the item's size (charged once, when the
# item is created). Returns the content's card (the event id itself
# when it is the card): one script, so two ingest replicas cannot both create a card for one content, and a
# decision taken meanwhile is not undone by a re-delivered verdict. A decided card whose item is missing (a
# decision restored from the reviews topic before its verdict was read again) gets its item, not a queue place.
ADD_SCRIPT = """
local card = redis.call('GET', KEYS[1])
if not card then
  redis.call('SET', KEYS[1], ARGV[1])
  card = ARGV[1]
end
if card ~= ARGV[1] then return card end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('INCRBY', KEYS[5], ARGV[4]) end
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('SET', KEYS[2], ARGV[2], 'NX')
  return card
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return card
"""

T = TypeVar("T")


def counted(op: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    def wrap(method: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> T:
            try:
                return method(*args, **kwargs)
            except REDIS_ERRORS:
                STORE_ERRORS.labels(op=op).inc()
                raise
        return call
    return wrap


@dataclass(frozen=True)
class Item:
    verdict: Verdict
    ref: dict[str, Any]  # {"image_url" | "record": [topic, partition, offset] | "image_b64" (older versions), "text"}
    decision: dict[str, Any] | None = None
    duplicates: list[dict[str, Any]] = field(default_factory=list)  # [{event_id, post_id, author_id, created_at}]
    duplicate_count: int = 0


class ReviewStore:
    def __init__(self, url: str, prefix: str = "review:", ref_ttl_s: int = REF_TTL_S, bucket_s: int = BUCKET_S
                 ) -> None:
        self.r = sync_client(url, timeout_s=5)
        self.p = prefix
        self.q = f"{prefix}{hash_tag(prefix.strip(':') or 'review')}:"  # the queue's keys: one slot
        self.ref_ttl_s, self.bucket_s = ref_ttl_s, bucket_s
        self._add = self.r.register_script(ADD_SCRIPT)
        self._reserve_script = self.r.register_script(RESERVE_SCRIPT)

    def _budget_keys(self) -> tuple[list[str], int]:
        """The byte buckets that can still be live, newest first, with the cards' counter; the newest's expiry."""
        now = int(time.time()) // self.bucket_s
        live = -(-self.ref_ttl_s // self.bucket_s) + 1  # every bucket whose keys may not all have expired yet
        keys = [f"{self.q}bytes:{b}" for b in range(now, now - live, -1)] + [f"{self.q}bytes:cards"]
        return keys, (now + 1) * self.bucket_s + self.ref_ttl_s

    @counted("usage")
    def usage(self) -> int:
        """Bytes the store counts as held (see "Memory budget" in the module docstring)."""
        keys, _ = self._budget_keys()
        held = sum(int(v) for v in self.r.mget(keys) if v is not None)
        STORE_BYTES.set(held)
        return held

    def _reserve(self, key: str, value: str, budget: int | None) -> None:
        """Charge one TTL'd key before writing it: EntryTooLarge, or OverBudget when it would not fit."""
        n = charge(key, value)
        if n > MAX_ENTRY_BYTES:
            raise EntryTooLarge(f"{n} bytes, more than the review store's {MAX_ENTRY_BYTES} for one entry")
        keys, expires = self._budget_keys()
        ok, held = self._reserve_script(keys=keys, args=[n, -1 if budget is None else budget, expires])
        STORE_BYTES.set(int(held))
        if not ok:
            raise OverBudget(int(held), budget or 0)

    def _event_keys(self, event_id: str) -> tuple[str, str]:
        tag = hash_tag(event_id)
        return f"{self.p}ref:{tag}", f"{self.p}waiting:{tag}"

    @counted("put_ref")
    def put_ref(self, event_id: str, ref: dict[str, Any], budget: int | None = None) -> None:
        """`budget`: refuse with OverBudget what would take the store past it (None: charge, never refuse)."""
        ref_key, waiting_key = self._event_keys(event_id)
        value = json.dumps(ref)
        self._reserve(ref_key, value, budget)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.set(ref_key, value, ex=self.ref_ttl_s)
            pipe.get(waiting_key)
            _, waiting = pipe.execute()
        if waiting is not None:
            self.add(Verdict.model_validate_json(waiting), ref)
            self.r.delete(waiting_key)

    @counted("put_verdict")
    def put_verdict(self, v: Verdict, budget: int | None = None) -> None:
        ref_key, waiting_key = self._event_keys(v.event_id)
        value = v.model_dump_json()
        self._reserve(waiting_key, value, budget)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.set(waiting_key, value, ex=self.ref_ttl_s)
            pipe.get(ref_key)
            _, raw = pipe.execute()
        if raw is not None:
            self.add(v, json.loads(raw))
            self.r.delete(waiting_key)

    @counted("add")
    def add(self, v: Verdict, ref: dict[str, Any]) -> None:
        """Idempotent by event id: a re-delivered verdict, or one two replicas both read, queues one card."""
        item = json.dumps({"verdict": v.model_dump(mode="json"), "ref": ref})
        keys = [f"{self.q}card:{v.content_hash}", f"{self.q}item:{v.event_id}", f"{self.q}queue",
                f"{self.q}decision:{v.event_id}", f"{self.q}bytes:cards"]
        card = self._add(keys=keys, args=[v.event_id, item, v.created_at.timestamp(), charge(keys[1], item)]).decode()
        if card != v.event_id:
            self._attach(card, v)

    def _attach(self, card: str, v: Verdict) -> None:
        """A repost of a card's content: remembered once per event id (re-deliveries are no-ops)."""
        alias = f"{self.q}alias:{v.event_id}"
        if not self.r.set(alias, card, nx=True):
            return
        entry = json.dumps({"event_id": v.event_id, "post_id": v.post_id, "author_id": v.author_id,
                            "created_at": v.created_at.isoformat()})
        with self.r.pipeline(transaction=True) as pipe:
            pipe.incrby(f"{self.q}bytes:cards", charge(alias, card) + len(entry))  # the list's entry, even if trimmed
            pipe.incr(f"{self.q}dupcount:{card}")
            pipe.rpush(f"{self.q}dups:{card}", entry)
            pipe.ltrim(f"{self.q}dups:{card}", 0, MAX_DUPLICATES - 1)
            pipe.execute()

    @counted("card_of")
    def card_of(self, event_id: str) -> str | None:
        """The card a repost's event id was attached to, if it was."""
        raw = self.r.get(f"{self.q}alias:{event_id}")
        return raw.decode() if raw is not None else None

    @counted("get")
    def get(self, event_id: str) -> Item | None:
        raw = self.r.get(f"{self.q}item:{event_id}")
        if raw is None:
            return None
        data = json.loads(raw)
        decision, count = self.r.mget(f"{self.q}decision:{event_id}", f"{self.q}dupcount:{event_id}")
        dups = [json.loads(d) for d in self.r.lrange(f"{self.q}dups:{event_id}", 0, -1)] if count else []
        count = int(count or 0)
        return Item(Verdict.model_validate(data["verdict"]), data["ref"], json.loads(decision) if decision else None,
                    dups, count)

    @counted("pending")
    def pending(self, limit: int = 50) -> list[str]:
        return [m.decode() for m in self.r.zrange(f"{self.q}queue", 0, limit - 1)]

    @counted("pending_count")
    def pending_count(self) -> int:
        return int(self.r.zcard(f"{self.q}queue"))

    @counted("claim")
    def claim(self, event_id: str, ttl_s: int = 30) -> bool:
        """One moderator at a time publishes a decision for a meme (two tabs, a double click)."""
        return bool(self.r.set(f"{self.q}claim:{event_id}", "1", nx=True, ex=ttl_s))

    @counted("release")
    def release(self, event_id: str) -> None:
        self.r.delete(f"{self.q}claim:{event_id}")

    @counted("decide")
    def decide(self, event_id: str, decision: dict[str, Any]) -> None:
        """`decision` is the published review message; its `moderator` can undo it while it is their latest."""
        last = f"{self.q}last:{decision['moderator']}"
        with self.r.pipeline(transaction=True) as pipe:
            pipe.set(f"{self.q}decision:{event_id}", json.dumps(decision))
            pipe.zrem(f"{self.q}queue", event_id)
            pipe.lrem(f"{self.q}recent", 0, event_id)
            pipe.lpush(f"{self.q}recent", event_id)
            pipe.ltrim(f"{self.q}recent", 0, 49)
            pipe.lpush(last, json.dumps({"event_id": event_id, "review_id": decision.get("review_id")}))
            pipe.ltrim(last, 0, UNDO_DEPTH - 1)
            pipe.execute()

    @counted("last_decision")
    def last_decision(self, moderator: str) -> Item | None:
        """The moderator's latest decision that still stands (entries no longer current are dropped)."""
        key = f"{self.q}last:{moderator}"
        for raw in self.r.lrange(key, 0, UNDO_DEPTH - 1):
            entry = json.loads(raw)
            item = self.get(entry["event_id"])
            if (item is not None and item.decision is not None and item.decision.get("review_id") == entry["review_id"]
                    and item.decision.get("moderator") == moderator):
                return item
            self.r.lrem(key, 1, raw)
        return None

    @counted("undo")
    def undo(self, event_id: str, moderator: str, review_id: str) -> None:
        """Back to the queue, at its place by verdict time; call only after the retraction was published."""
        item = self.get(event_id)
        if item is None:
            return
        entry = json.dumps({"event_id": event_id, "review_id": review_id})
        with self.r.pipeline(transaction=True) as pipe:
            pipe.delete(f"{self.q}decision:{event_id}")
            pipe.zadd(f"{self.q}queue", {event_id: item.verdict.created_at.timestamp()})
            pipe.lrem(f"{self.q}recent", 0, event_id)
            pipe.lrem(f"{self.q}last:{moderator}", 1, entry)
            pipe.execute()

    @counted("restore_decision")
    def restore_decision(self, decision: dict[str, Any]) -> str:
        """A decision read back from the reviews topic (the published review message, signature removed), for a
        rebuild: its content's card is the review's event id unless the content already has one; the card is
        decided and out of the queue, so its verdict read again (and every repost) queues nothing. Returns the
        card's event id."""
        card_key = f"{self.q}card:{decision['content_hash']}"
        self.r.set(card_key, decision["event_id"], nx=True)
        card = self.r.get(card_key).decode()
        with self.r.pipeline(transaction=True) as pipe:
            pipe.set(f"{self.q}decision:{card}", json.dumps(decision))
            pipe.zrem(f"{self.q}queue", card)
            pipe.lrem(f"{self.q}recent", 0, card)
            pipe.lpush(f"{self.q}recent", card)
            pipe.ltrim(f"{self.q}recent", 0, 49)
            pipe.execute()
        return card

    @counted("mark_over_budget")
    def mark_over_budget(self, ttl_s: int = 30) -> None:
        """Set by a paused ingest and refreshed while it stays paused (gone within `ttl_s` if it dies)."""
        self.r.set(f"{self.q}over_budget", "1", ex=ttl_s)

    @counted("clear_over_budget")
    def clear_over_budget(self) -> None:
        self.r.delete(f"{self.q}over_budget")

    @counted("over_budget")
    def over_budget(self) -> bool:
        """Whether an ingest replica is paused because the store reached its memory budget."""
        return bool(self.r.exists(f"{self.q}over_budget"))

    @counted("built")
    def built(self) -> bool:
        """Whether this Redis still holds a queue filled from the topics (see the module docstring)."""
        return bool(self.r.exists(f"{self.q}built"))

    @counted("mark_built")
    def mark_built(self) -> None:
        self.r.set(f"{self.q}built", "1")

    @counted("open_session")
    def open_session(self, sid: str, user: str, ttl_s: int) -> None:
        self.r.set(f"{self.q}session:{sid}", user, ex=ttl_s)

    @counted("session_live")
    def session_live(self, sid: str, user: str) -> bool:
        raw = self.r.get(f"{self.q}session:{sid}")
        return raw is not None and raw.decode() == user

    @counted("close_session")
    def close_session(self, sid: str) -> None:
        self.r.delete(f"{self.q}session:{sid}")

    @counted("recent")
    def recent(self) -> list[str]:
        return [m.decode() for m in self.r.lrange(f"{self.q}recent", 0, 19)]
