"""The verdict cache with Redis down (a closed loopback port): errors are counted, the circuit breaker then skips
Redis for the cool-down, and the first call after it probes Redis again."""

import asyncio
import socket

from consumer.cache import VerdictCache


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket is closed


def test_redis_down_is_counted_then_skipped_then_probed_again():
    async def scenario() -> tuple[list, dict, dict, dict]:
        cache = VerdictCache(f"redis://127.0.0.1:{closed_port()}/0", ttl_s=60, timeout_s=0.5, retry_after_s=0.3)
        first = await cache.get_many(["a", "b"])
        after_error = dict(cache.counts)
        await cache.get_many(["a", "b", "c"])
        await cache.put_many({})  # nothing to store: no call, no count
        during_cooldown = dict(cache.counts)
        await asyncio.sleep(0.4)
        await cache.get_many(["a"])
        await cache.close()
        return first, after_error, during_cooldown, dict(cache.counts)

    first, after_error, during_cooldown, after_probe = asyncio.run(scenario())
    assert first == [None, None]
    assert after_error == {"errors": 1}
    assert during_cooldown == {"errors": 1, "skipped": 3}  # Redis not even tried while the circuit is open
    assert after_probe == {"errors": 2, "skipped": 3}  # the probe went to Redis, failed, and was counted


def test_no_redis_url_skips_everything():
    cache = VerdictCache("", ttl_s=60, timeout_s=0.5, retry_after_s=1.0)
    assert asyncio.run(cache.get_many(["a"])) == [None] and cache.counts == {"skipped": 1}
