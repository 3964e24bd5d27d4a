"""Redis verdict cache keyed by model version + content hash. An outage degrades to no cache, never blocks."""

import logging
from collections import Counter

from purgatory.domain.model import OpenedState
from redis.asyncio.cluster import RedisCluster

from consumer.core.redis_client import REDIS_ERRORS, async_client, outage_breaker
from schemas import Verdict

log = logging.getLogger(__name__)

PARSED_ENTRIES = 4096  # ~2 KB each: a few MiB of parsed verdicts kept for repeated hits
CIRCUIT = "redis"


def cache_key(model_version: str, content_hash: str, variant: str = "") -> str:
    """`variant` names settings that change scores for the same model (enrichment); empty for none."""
    return f"verdict:{model_version}{'~' + variant if variant else ''}:{content_hash}"


class VerdictCache:
    """`get_many` / `put_many` swallow Redis failures: they count them ("errors") and a circuit breaker (purgatory)
    skips Redis for `retry_after_s` ("skipped"), then lets the next call probe it."""

    def __init__(self, url: str, ttl_s: int, timeout_s: float, retry_after_s: float) -> None:
        self.ttl_s = ttl_s
        self.retry_after_s = retry_after_s
        self.counts: Counter[str] = Counter()
        self._breakers = outage_breaker(retry_after_s)
        self._parsed: dict[bytes, Verdict] = {}  # raw entry -> parsed verdict, bounded (PARSED_ENTRIES)
        # A Redis Cluster URL gives a cluster client. Verdict keys carry no shared hash tag on purpose: one tag would
        # put the whole cache on one master; MGET is split per slot (no atomicity needed), pipelines per node.
        self._client = async_client(url, timeout_s, retry_on_timeout=False, health_check_interval=0) if url else None

    def _outage(self, op: str, e: Exception) -> None:
        self.counts["errors"] += 1  # each error opens the circuit, so this logs once per outage
        log.warning("redis %s failed (%s); serving without cache for %.1fs", op, e, self.retry_after_s)

    async def get_many(self, keys: list[str]) -> list[Verdict | None]:
        if not keys or self._client is None:
            self.counts["skipped"] += len(keys)
            return [None] * len(keys)
        try:
            async with await self._breakers.get_breaker(CIRCUIT):
                raw = await (self._client.mget_nonatomic(keys) if isinstance(self._client, RedisCluster)
                             else self._client.mget(keys))
        except OpenedState:
            self.counts["skipped"] += len(keys)
            return [None] * len(keys)
        except REDIS_ERRORS as e:
            self._outage("MGET", e)
            return [None] * len(keys)
        found = [self._parse(value) if value is not None else None for value in raw]
        hits = sum(v is not None for v in found)
        self.counts["hits"] += hits
        self.counts["misses"] += len(found) - hits
        return found

    def _parse(self, value: bytes) -> Verdict | None:
        """Popular memes come back from Redis as the same bytes again and again: each distinct entry is
        validated once (Verdict is frozen, so the parsed object can be shared), not once per hit."""
        verdict = self._parsed.get(value)
        if verdict is None:
            try:
                verdict = Verdict.model_validate_json(value)
            except ValueError:  # an entry written by an incompatible version is a miss, not an error
                return None
            if len(self._parsed) >= PARSED_ENTRIES:
                del self._parsed[next(iter(self._parsed))]  # the oldest goes first
            self._parsed[value] = verdict
        return verdict

    async def put_many(self, items: dict[str, Verdict]) -> None:
        if not items or self._client is None:
            return
        try:
            async with await self._breakers.get_breaker(CIRCUIT), self._client.pipeline(transaction=False) as pipe:
                for key, verdict in items.items():
                    # NX: the first computation wins, so re-processed events keep identical scores.
                    pipe.set(key, verdict.model_dump_json(), nx=True, ex=self.ttl_s)
                await pipe.execute()
            self.counts["stored"] += len(items)
        except OpenedState:
            pass  # Redis is resting after a failure: this batch's verdicts are not cached
        except REDIS_ERRORS as e:
            self._outage("SET", e)
        except Exception:  # noqa: BLE001 (a cache write must never fail a batch, whatever went wrong)
            self.counts["errors"] += 1
            log.exception("storing %d verdicts in the cache failed", len(items))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
