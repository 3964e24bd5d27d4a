"""The verdict cache with Redis down (a closed loopback port): errors are counted, the circuit breaker then skips
Redis for the cool-down, and the first call after it probes Redis again."""

import asyncio
import socket

from consumer.core.cache import VerdictCache


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


def test_crash_loop_breaker_with_redis_down_counts_once_per_cool_down_and_lets_processing_go_on():
    from consumer.core.pipeline import RawRecord
    from consumer.worker.crash_guard import CrashLoopBreaker

    async def scenario() -> tuple[bool, str | None, dict, dict]:
        breaker = CrashLoopBreaker(f"redis://127.0.0.1:{closed_port()}/0", "g", timeout_s=0.5, retry_after_s=0.3)
        records = [RawRecord(None, b"{}", "raw", 0, o) for o in (1, 2)]
        suspect = await breaker.begin_batch(records)  # fails: counted, circuit open
        poison = await breaker.begin_alone(records[0])  # skipped while open: no second error
        await breaker.finish(records)
        during_cooldown = dict(breaker.counts)
        await asyncio.sleep(0.4)
        await breaker.finish(records)  # the probe after the cool-down reaches Redis and fails again
        await breaker.close()
        return suspect, poison, during_cooldown, dict(breaker.counts)

    suspect, poison, during_cooldown, after_probe = asyncio.run(scenario())
    assert (suspect, poison) == (False, None)  # without Redis the breaker is off, never a false poison verdict
    assert during_cooldown == {"errors": 1}
    assert after_probe == {"errors": 2}
