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

Every Redis failure is counted in `memeguard_review_store_errors_total{op}` and raised to the caller (the
page answers 503 "degraded: Redis is unreachable, decisions are paused", the ingest logs it and reads the
records again): nothing is dropped silently.
"""

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import Counter

from consumer.core.redis_client import REDIS_ERRORS, hash_tag, sync_client
from schemas import Verdict

REF_TTL_S = 24 * 3600
MAX_DUPLICATES = 1000  # reposts listed per card (and per review message); `dupcount` counts all of them
UNDO_DEPTH = 20  # decisions per moderator that `undo` can walk back, newest first

STORE_ERRORS = Counter("memeguard_review_store_errors", "Review store operations that failed on Redis.", ["op"])

# Queue a card unless its content already has one or it was decided. KEYS: card:HASH, item:ID, queue,
# decision:ID (one slot); ARGV: event id, item JSON, score. Returns the content's card (the event id itself
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
    def __init__(self, url: str, prefix: str = "review:") -> None:
        self.r = sync_client(url, timeout_s=5)
        self.p = prefix
        self.q = f"{prefix}{hash_tag(prefix.strip(':') or 'review')}:"  # the queue's keys: one slot
        self._add = self.r.register_script(ADD_SCRIPT)

    def _event_keys(self, event_id: str) -> tuple[str, str]:
        tag = hash_tag(event_id)
        return f"{self.p}ref:{tag}", f"{self.p}waiting:{tag}"

    @counted("put_ref")
    def put_ref(self, event_id: str, ref: dict[str, Any]) -> None:
        ref_key, waiting_key = self._event_keys(event_id)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.set(ref_key, json.dumps(ref), ex=REF_TTL_S)
            pipe.get(waiting_key)
            _, waiting = pipe.execute()
        if waiting is not None:
            self.add(Verdict.model_validate_json(waiting), ref)
            self.r.delete(waiting_key)

    @counted("put_verdict")
    def put_verdict(self, v: Verdict) -> None:
        ref_key, waiting_key = self._event_keys(v.event_id)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.set(waiting_key, v.model_dump_json(), ex=REF_TTL_S)
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
                f"{self.q}decision:{v.event_id}"]
        card = self._add(keys=keys, args=[v.event_id, item, v.created_at.timestamp()]).decode()
        if card != v.event_id:
            self._attach(card, v)

    def _attach(self, card: str, v: Verdict) -> None:
        """A repost of a card's content: remembered once per event id (re-deliveries are no-ops)."""
        if not self.r.set(f"{self.q}alias:{v.event_id}", card, nx=True):
            return
        entry = {"event_id": v.event_id, "post_id": v.post_id, "author_id": v.author_id,
                 "created_at": v.created_at.isoformat()}
        with self.r.pipeline(transaction=True) as pipe:
            pipe.incr(f"{self.q}dupcount:{card}")
            pipe.rpush(f"{self.q}dups:{card}", json.dumps(entry))
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
