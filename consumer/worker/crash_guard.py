"""Crash-loop breaker: a safety net for bugs nobody found yet.

A record that kills the process (a native crash, an OOM kill, a bug that escapes every handler) is
re-delivered after the restart and would kill it again, forever. Before a batch is processed each of its
records gets an attempt count in Redis, cleared once the batch's outputs are acknowledged. A count left
over from an earlier attempt means the process died with that record in flight: the batch is then
processed one record at a time, each with its own count, and a record that was in flight alone when the
process died is dead-lettered as `poison_record` instead of being processed a third time.

State lives in Redis (shared by the consumer group, so it survives a partition moving to another member):
one hash per input partition, fields `b<offset>` (attempts in a batch) and `i<offset>` (attempts alone).
Without Redis the breaker is off (counted, logged once) and processing goes on.
"""

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from purgatory.domain.model import OpenedState

from consumer.core.pipeline import RawRecord
from consumer.core.redis_client import REDIS_ERRORS, async_client, outage_breaker
from schemas.text_safety import safe_text

log = logging.getLogger(__name__)

STATE_TTL_S = 7 * 24 * 3600
# One call per partition key instead of one HINCRBY per record: a batch of 64 cost ~3.8 ms of the worker's CPU
# in redis-py's per-command packing and parsing (14% of a cache hit's). KEYS[1] the partition's hash,
# ARGV[1] the TTL, ARGV[2..] the fields; returns each field's new count, in order.
_INCREMENT_FIELDS = """
local counts = {}
for i = 2, #ARGV do counts[i - 1] = redis.call('HINCRBY', KEYS[1], ARGV[i], 1) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return counts
"""
# Takes back one attempt of each field (KEYS[1] the partition's hash, ARGV the fields), never below zero.
_TAKE_BACK_FIELDS = """
for i = 1, #ARGV do
  local n = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if n > 1 then redis.call('HINCRBY', KEYS[1], ARGV[i], -1) elseif n == 1 then redis.call('HDEL', KEYS[1], ARGV[i]) end
end
return 0
"""


class CrashLoopBreaker:
    def __init__(self, url: str, group: str, timeout_s: float, retry_after_s: float) -> None:
        self.group = group
        self.retry_after_s = retry_after_s
        self.counts: Counter[str] = Counter()
        self._breakers = outage_breaker(retry_after_s)
        # a redis+cluster:// URL gives a cluster client (consumer/core/redis_client.py)
        self._client = async_client(url, timeout_s, retry_on_timeout=False) if url else None
        self._alone: RawRecord | None = None  # the record begin_alone() counted and finish() has not cleared

    def _key(self, r: RawRecord) -> str:
        # The {…} hash tag keeps a partition's state in one Redis Cluster slot.
        return f"memeguard:attempts:{{{self.group}:{r.topic}:{r.partition}}}"

    async def _redis(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """`call()`'s result, or None while Redis is out (counted; the breaker is off until it answers again)."""
        if self._client is None:
            return None
        try:
            async with await self._breakers.get_breaker("redis"):
                return await call()
        except OpenedState:
            return None
        except REDIS_ERRORS as e:  # each error opens the circuit, so this logs once per outage
            self.counts["errors"] += 1
            log.warning("crash-loop breaker off for %.1fs: redis failed (%s)", self.retry_after_s, e)
            return None

    async def _pipeline(self, fill: Callable[[Any], None]) -> list[Any] | None:
        async def run() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                fill(pipe)
                return await pipe.execute()
        return await self._redis(run)

    def _fields_by_key(self, records: Iterable[RawRecord], prefixes: str) -> dict[str, list[str]]:
        fields: dict[str, list[str]] = {}
        for r in records:
            fields.setdefault(self._key(r), []).extend(f"{p}{r.offset}" for p in prefixes)
        return fields

    async def _incr(self, records: Iterable[RawRecord], prefix: str) -> list[int] | None:
        """Each record's new attempt count (in no particular order), or None while Redis is out."""
        fields = self._fields_by_key(records, prefix)
        if not fields:
            return None
        replies = await self._pipeline(lambda pipe: [pipe.eval(_INCREMENT_FIELDS, 1, key, STATE_TTL_S, *names)
                                                     for key, names in fields.items()])
        return None if replies is None else [int(n) for counts in replies for n in counts]

    async def begin_batch(self, records: list[RawRecord]) -> bool:
        """True when a record of this batch was in flight in an attempt that never finished."""
        attempts = await self._incr(records, "b")
        suspect = attempts is not None and max(attempts) > 1
        if suspect:
            self.counts["suspect_batches"] += 1
            log.warning("a record of this batch was in flight when a worker died; processing it one by one",
                        extra={"records": len(records)})
        return suspect

    async def begin_alone(self, record: RawRecord) -> str | None:
        """The poison message when this record already killed the process while in flight alone."""
        self._alone = record
        attempts = await self._incr([record], "i")
        if not attempts or attempts[0] < 2:
            return None
        self.counts["poison_records"] += 1
        error = await self._last_error(record)
        return ("the worker exited twice while processing this record; it is dead-lettered instead of being "
                "processed again" + (f" (last error: {error})" if error else " (killed or crashed: no error recorded)"))

    async def _last_error(self, record: RawRecord) -> str | None:
        raw = await self._redis(lambda: self._client.hget(self._key(record), f"e{record.offset}"))
        return raw.decode("utf-8", "replace") if raw else None

    async def record_error(self, records: list[RawRecord], error: BaseException) -> None:
        """Called before an exit on an error: the text goes into a later `poison_record` dead letter."""
        if not records:
            return
        text = safe_text(f"{type(error).__name__}: {error}", 500)
        await self._pipeline(lambda pipe: [pipe.hset(self._key(r), f"e{r.offset}", text) for r in records])

    async def finish(self, records: list[RawRecord]) -> None:
        """The records' outputs are acknowledged: forget their attempts."""
        if self._alone is not None and self._alone in records:
            self._alone = None
        fields = self._fields_by_key(records, "bie")
        if fields:
            await self._pipeline(lambda pipe: [pipe.hdel(key, *names) for key, names in fields.items()])

    async def take_back(self, records: list[RawRecord]) -> None:
        """The attempt on `records` ends on an infrastructure failure (the broker did not take the outputs):
        it says nothing about the records, so it does not count toward `poison_record`. Their batch attempt,
        and the attempt alone of the record in flight alone, are taken back."""
        fields = self._fields_by_key(records, "b")
        if self._alone is not None and self._alone in records:
            fields.setdefault(self._key(self._alone), []).append(f"i{self._alone.offset}")
            self._alone = None
        if fields:
            await self._pipeline(lambda pipe: [pipe.eval(_TAKE_BACK_FIELDS, 1, key, *names)
                                               for key, names in fields.items()])

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
