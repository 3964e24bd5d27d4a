"""Alert state in Redis, so de-duplication and author windows survive a restart of the alerter.

- `alert:sent:{rule}:{subject}`: set once every destination has the alert (TTL `dedup_ttl_s`; for author
  rules the window length, so a persistent offender alerts again once per window).
- `alert:window:{rule}:{author}`: sorted set of post ids scored by the verdict's time. Post ids as members
  make a re-delivered verdict count once.
"""

import redis.asyncio as aioredis

from consumer.errors import ConfigError


class AlertState:
    def __init__(self, url: str, dedup_ttl_s: int) -> None:
        if not url:
            raise ConfigError("The alerter needs Redis for its windows and de-duplication: set MEMEGUARD_REDIS_URL.")
        self.redis = aioredis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.dedup_ttl_s = dedup_ttl_s

    @staticmethod
    def _sent(rule: str, subject: str) -> str:
        return f"alert:sent:{rule}:{subject}"

    async def already_sent(self, rule: str, subject: str) -> bool:
        return bool(await self.redis.exists(self._sent(rule, subject)))

    async def mark_sent(self, rule: str, subject: str, ttl_s: float | None = None) -> None:
        await self.redis.set(self._sent(rule, subject), "1", ex=max(1, int(ttl_s or self.dedup_ttl_s)))

    async def count_in_window(self, rule: str, author: str, post_id: str, at: float, window_s: float) -> int:
        """Add this post to the author's window (ending at `at`, event time) and return the window's size."""
        key = f"alert:window:{rule}:{author}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {post_id: at})
            pipe.zremrangebyscore(key, "-inf", at - window_s)
            pipe.zcount(key, at - window_s, at)
            pipe.expire(key, int(window_s) + 60)
            _, _, count, _ = await pipe.execute()
        return int(count)

    async def close(self) -> None:
        await self.redis.aclose()
