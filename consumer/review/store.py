"""The review queue in Redis: items waiting for a moderator and the decisions taken, kept across restarts.

One card per content hash: the first event of a content that needs review becomes its card; later events of
the same content (reposts: same image bytes and normalised text, new event ids) are attached to that card as
duplicates instead of queueing a second card. A decision on the card is one review message that lists them.
A repost that arrives after the card was decided is attached too (shown on the page) but publishes nothing:
a review message carries the `content_hash`, and the decision applies to every post of that content (label
builders and enforcement join on it). Undo puts the card, with all its reposts, back in the queue.

Keys (all under `review:`):
- `ref:{event_id}` (TTL): how to load the meme of an input event: its image reference and text. Written for
  every input event, because the verdict that says `review` comes later, on another topic.
- `waiting:{event_id}` (TTL): a review verdict that arrived before its event's reference.
- `item:{event_id}`: verdict + reference of a card; `queue`: pending card ids scored by verdict time.
- `card:{content_hash}`: the event id of the content's card. `alias:{event_id}`: a repost's card.
  `dups:{event_id}` (the first MAX_DUPLICATES reposts) and `dupcount:{event_id}` (all of them).
- `decision:{event_id}`: the moderator's decision (the published review message), so a refresh or a restart
  shows it; `recent`: the latest decided cards; `last:{user}`: that moderator's latest decisions, for undo.
- `claim:{event_id}` (30 s): one request at a time publishes for a card.
"""

import json
from dataclasses import dataclass, field
from typing import Any

import redis

from schemas import Verdict

REF_TTL_S = 24 * 3600
MAX_INLINE_IMAGE_CHARS = 4 * 1024 * 1024  # base64 chars kept for inline images; larger ones are not reviewable
MAX_DUPLICATES = 1000  # reposts listed per card (and per review message); `dupcount` counts all of them
UNDO_DEPTH = 20  # decisions per moderator that `undo` can walk back, newest first


@dataclass(frozen=True)
class Item:
    verdict: Verdict
    ref: dict[str, Any]  # {"image_url"| "image_b64", "text"}
    decision: dict[str, Any] | None = None
    duplicates: list[dict[str, Any]] = field(default_factory=list)  # [{event_id, post_id, author_id, created_at}]
    duplicate_count: int = 0


class ReviewStore:
    def __init__(self, url: str, prefix: str = "review:") -> None:
        self.r = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.p = prefix

    def put_ref(self, event_id: str, ref: dict[str, Any]) -> None:
        self.r.set(f"{self.p}ref:{event_id}", json.dumps(ref), ex=REF_TTL_S)
        waiting = self.r.get(f"{self.p}waiting:{event_id}")
        if waiting is not None:
            self.add(Verdict.model_validate_json(waiting), ref)
            self.r.delete(f"{self.p}waiting:{event_id}")

    def put_verdict(self, v: Verdict) -> None:
        raw = self.r.get(f"{self.p}ref:{v.event_id}")
        if raw is None:
            self.r.set(f"{self.p}waiting:{v.event_id}", v.model_dump_json(), ex=REF_TTL_S)
        else:
            self.add(v, json.loads(raw))

    def add(self, v: Verdict, ref: dict[str, Any]) -> None:
        card_key = f"{self.p}card:{v.content_hash}"
        if not self.r.set(card_key, v.event_id, nx=True):
            card = (self.r.get(card_key) or b"").decode()
            if card and card != v.event_id:
                self._attach(card, v)
                return
        if self.r.exists(f"{self.p}decision:{v.event_id}"):
            return  # a re-delivered verdict must not put a decided meme back in the queue
        self.r.set(f"{self.p}item:{v.event_id}", json.dumps({"verdict": v.model_dump(mode="json"), "ref": ref}))
        self.r.zadd(f"{self.p}queue", {v.event_id: v.created_at.timestamp()})

    def _attach(self, card: str, v: Verdict) -> None:
        """A repost of a card's content: remembered once per event id (re-deliveries are no-ops)."""
        if not self.r.set(f"{self.p}alias:{v.event_id}", card, nx=True):
            return
        entry = {"event_id": v.event_id, "post_id": v.post_id, "author_id": v.author_id,
                 "created_at": v.created_at.isoformat()}
        with self.r.pipeline(transaction=True) as pipe:
            pipe.incr(f"{self.p}dupcount:{card}")
            pipe.rpush(f"{self.p}dups:{card}", json.dumps(entry))
            pipe.ltrim(f"{self.p}dups:{card}", 0, MAX_DUPLICATES - 1)
            pipe.execute()

    def card_of(self, event_id: str) -> str | None:
        """The card a repost's event id was attached to, if it was."""
        raw = self.r.get(f"{self.p}alias:{event_id}")
        return raw.decode() if raw is not None else None

    def get(self, event_id: str) -> Item | None:
        raw = self.r.get(f"{self.p}item:{event_id}")
        if raw is None:
            return None
        data = json.loads(raw)
        decision, count = self.r.mget(f"{self.p}decision:{event_id}", f"{self.p}dupcount:{event_id}")
        dups = [json.loads(d) for d in self.r.lrange(f"{self.p}dups:{event_id}", 0, -1)] if count else []
        count = int(count or 0)
        return Item(Verdict.model_validate(data["verdict"]), data["ref"], json.loads(decision) if decision else None,
                    dups, count)

    def pending(self, limit: int = 50) -> list[str]:
        return [m.decode() for m in self.r.zrange(f"{self.p}queue", 0, limit - 1)]

    def pending_count(self) -> int:
        return int(self.r.zcard(f"{self.p}queue"))

    def claim(self, event_id: str, ttl_s: int = 30) -> bool:
        """One moderator at a time publishes a decision for a meme (two tabs, a double click)."""
        return bool(self.r.set(f"{self.p}claim:{event_id}", "1", nx=True, ex=ttl_s))

    def release(self, event_id: str) -> None:
        self.r.delete(f"{self.p}claim:{event_id}")

    def decide(self, event_id: str, decision: dict[str, Any]) -> None:
        """`decision` is the published review message; its `moderator` can undo it while it is their latest."""
        last = f"{self.p}last:{decision['moderator']}"
        with self.r.pipeline(transaction=True) as pipe:
            pipe.set(f"{self.p}decision:{event_id}", json.dumps(decision))
            pipe.zrem(f"{self.p}queue", event_id)
            pipe.lrem(f"{self.p}recent", 0, event_id)
            pipe.lpush(f"{self.p}recent", event_id)
            pipe.ltrim(f"{self.p}recent", 0, 49)
            pipe.lpush(last, json.dumps({"event_id": event_id, "review_id": decision.get("review_id")}))
            pipe.ltrim(last, 0, UNDO_DEPTH - 1)
            pipe.execute()

    def last_decision(self, moderator: str) -> Item | None:
        """The moderator's latest decision that still stands (entries no longer current are dropped)."""
        key = f"{self.p}last:{moderator}"
        for raw in self.r.lrange(key, 0, UNDO_DEPTH - 1):
            entry = json.loads(raw)
            item = self.get(entry["event_id"])
            if (item is not None and item.decision is not None and item.decision.get("review_id") == entry["review_id"]
                    and item.decision.get("moderator") == moderator):
                return item
            self.r.lrem(key, 1, raw)
        return None

    def undo(self, event_id: str, moderator: str, review_id: str) -> None:
        """Back to the queue, at its place by verdict time; call only after the retraction was published."""
        item = self.get(event_id)
        if item is None:
            return
        entry = json.dumps({"event_id": event_id, "review_id": review_id})
        with self.r.pipeline(transaction=True) as pipe:
            pipe.delete(f"{self.p}decision:{event_id}")
            pipe.zadd(f"{self.p}queue", {event_id: item.verdict.created_at.timestamp()})
            pipe.lrem(f"{self.p}recent", 0, event_id)
            pipe.lrem(f"{self.p}last:{moderator}", 1, entry)
            pipe.execute()

    def recent(self) -> list[str]:
        return [m.decode() for m in self.r.lrange(f"{self.p}recent", 0, 19)]
