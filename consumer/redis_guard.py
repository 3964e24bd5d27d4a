"""A Redis client that degrades instead of blocking: the verdict cache and the crash-loop breaker both treat
Redis as optional. Every failure is counted; after one, Redis is skipped for `retry_after_s` (logged once
per outage) so a dead or slow Redis never holds the stream."""

import logging
import time
from collections import Counter

import redis.asyncio as aioredis

log = logging.getLogger(__name__)


class GuardedRedis:
    when_down = "going on without it"  # what the subclass does meanwhile, for the one log line

    def __init__(self, url: str, timeout_s: float, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        self.counts: Counter[str] = Counter()
        self._down_until = 0.0
        self._client = (
            aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                              retry_on_timeout=False, health_check_interval=0)
            if url else None
        )

    @property
    def available(self) -> bool:
        return self._client is not None and time.monotonic() >= self._down_until

    def _outage(self, op: str, e: Exception) -> None:
        self.counts["errors"] += 1
        if time.monotonic() >= self._down_until:
            log.warning("redis %s failed (%s); %s for %.1fs", op, e, self.when_down, self.retry_after_s)
        self._down_until = time.monotonic() + self.retry_after_s

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
