"""The review queue in Redis: items waiting for a moderator and the decisions taken, kept across restarts.

Keys (all under `review:`):
- `ref:{event_id}` (TTL): how to load the meme of an input event: its image reference and text. Written for
  every input event, because the verdict that says `review` comes later, on another topic.
- `waiting:{event_id}` (TTL): a review verdict that arrived before its event's reference.
- `item:{event_id}`: verdict + reference of a meme to review; `queue`: pending ids scored by verdict time.
- `decision:{event_id}`: the moderator's decision, so a refresh (or a restart) shows it.
"""

import json
from dataclasses import dataclass
from typing import Any

import redis

from schemas import Verdict

REF_TTL_S = 24 * 3600
MAX_INLINE_IMAGE_CHARS = 4 * 1024 * 1024  # base64 chars kept for inline images; larger ones are not reviewable


@dataclass(frozen=True)
class Item:
    verdict: Verdict
    ref: dict[str, Any]  # {"image_url"| "image_b64", "text"}
    decision: dict[str, Any] | None = None


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
        if self.r.exists(f"{self.p}decision:{v.event_id}"):
            return  # a re-delivered verdict must not put a decided meme back in the queue
        self.r.set(f"{self.p}item:{v.event_id}", json.dumps({"verdict": v.model_dump(mode="json"), "ref": ref}))
        self.r.zadd(f"{self.p}queue", {v.event_id: v.created_at.timestamp()})

    def get(self, event_id: str) -> Item | None:
        raw = self.r.get(f"{self.p}item:{event_id}")
        if raw is None:
            return None
        data = json.loads(raw)
        decision = self.r.get(f"{self.p}decision:{event_id}")
        return Item(Verdict.model_validate(data["verdict"]), data["ref"], json.loads(decision) if decision else None)

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
        with self.r.pipeline(transaction=True) as pipe:
            pipe.set(f"{self.p}decision:{event_id}", json.dumps(decision))
            pipe.zrem(f"{self.p}queue", event_id)
            pipe.lpush(f"{self.p}recent", event_id)
            pipe.ltrim(f"{self.p}recent", 0, 49)
            pipe.execute()

    def recent(self) -> list[str]:
        return [m.decode() for m in self.r.lrange(f"{self.p}recent", 0, 19)]
