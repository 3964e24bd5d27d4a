"""Webhook delivery: one bounded queue and one sender task per destination.

- Bounded queue: `submit` waits while a destination's queue is full, so a slow webhook slows the
  alerter down (back-pressure) instead of growing memory without limit.
- Rate limit: at most `rate_per_s` requests per second per destination (a token bucket of one token).
- Retries: connection errors, timeouts, 429 and 5xx are retried with exponential backoff; any other 4xx
  is the receiver refusing the alert and is not retried.
- After the last attempt the alert goes to `on_give_up` (the alerts dead-letter topic), never nowhere.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from consumer.alert.rules import Destination

log = logging.getLogger(__name__)

GiveUp = Callable[[dict[str, Any], Destination, str, int], Awaitable[None]]


class RateLimiter:
    """Spaces requests at least 1/rate apart (per destination, monotonic clock)."""

    def __init__(self, rate_per_s: float) -> None:
        self.interval = 1.0 / rate_per_s
        self._next = 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        delay = self._next - now
        self._next = max(now, self._next) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass
class _Job:
    alert: dict[str, Any]
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Webhook:
    def __init__(self, dest: Destination, client: httpx.AsyncClient, on_give_up: GiveUp,
                 on_result: Callable[[str, str], None] = lambda d, r: None) -> None:
        self.dest = dest
        self.client = client
        self.on_give_up = on_give_up
        self.on_result = on_result
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=dest.queue_size)
        self.limiter = RateLimiter(dest.rate_per_s)
        self._task: asyncio.Task | None = None

    def start(self) -> "Webhook":
        self._task = asyncio.create_task(self._run(), name=f"webhook-{self.dest.name}")
        return self

    async def submit(self, alert: dict[str, Any]) -> asyncio.Future:
        """Queue an alert; the returned future resolves once it is delivered or dead-lettered."""
        job = _Job(alert)
        await self.queue.put(job)
        return job.done

    async def _run(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                await self._deliver(job.alert)
                job.done.set_result(None)
            except asyncio.CancelledError:
                job.done.cancel()
                raise
            except Exception as e:  # the dead-letter publish itself failed: surface it to the batch
                log.exception("alert %s to %s could not be delivered nor dead-lettered", job.alert["alert_id"],
                              self.dest.name)
                job.done.set_exception(e)
            finally:
                self.queue.task_done()

    async def _deliver(self, alert: dict[str, Any]) -> None:
        dest = self.dest
        error = ""
        for attempt in range(1, dest.max_attempts + 1):
            await self.limiter.wait()
            try:
                r = await self.client.post(dest.url, json=alert, headers=dest.headers, timeout=dest.timeout_s)
                if r.status_code < 300:
                    self.on_result(dest.name, "delivered")
                    return
                error = f"HTTP {r.status_code}"
                if r.status_code < 500 and r.status_code != 429:
                    break  # the receiver refuses this alert: retrying will not change its mind
            except httpx.HTTPError as e:
                error = f"{type(e).__name__}: {e}"
            self.on_result(dest.name, "retried" if attempt < dest.max_attempts else "failed")
            if attempt < dest.max_attempts:
                await asyncio.sleep(min(dest.max_backoff_s, dest.backoff_s * 2 ** (attempt - 1)))
        log.warning("alert %s to %s failed after %d attempts (%s); dead-lettering it", alert["alert_id"],
                    dest.name, attempt, error, extra={"alert_id": alert["alert_id"], "destination": dest.name})
        self.on_result(dest.name, "dead_lettered")
        await self.on_give_up(alert, dest, error, attempt)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
