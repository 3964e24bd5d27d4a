"""Webhook delivery: one bounded queue and one sender task per destination.

- Bounded queue: `submit` waits while a destination's queue is full, so a slow webhook slows the
  alerter down (back-pressure) instead of growing memory without limit.
- Rate limit: at most `rate_per_s` requests per second per destination (aiolimiter, a bucket of one request).
- Retries: connection errors, timeouts, 429 and 5xx are retried with jittered exponential backoff
  (tenacity); any other 4xx
  is the receiver refusing the alert and is not retried.
- After the last attempt the alert goes to `on_give_up` (the alerts dead-letter topic), never nowhere.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from consumer.alert.rules import Destination

log = logging.getLogger(__name__)

GiveUp = Callable[[dict[str, Any], Destination, str, int], Awaitable[None]]


class _Retryable(Exception):
    """An attempt that may succeed if repeated: a connection error, a timeout, 429 or 5xx."""


class _Refused(Exception):
    """Any other non-2xx answer: the receiver refuses this alert, retrying will not change its mind."""


def _attempts(dest: Destination) -> AsyncRetrying:
    # Exponential backoff from backoff_s, doubled per failure, plus up to one backoff_s of jitter (so destinations
    # recovering from an outage are not hit by every alerter in step), capped at max_backoff_s.
    return AsyncRetrying(stop=stop_after_attempt(dest.max_attempts), retry=retry_if_exception_type(_Retryable),
                         wait=wait_exponential_jitter(multiplier=dest.backoff_s, max=dest.max_backoff_s,
                                                      jitter=dest.backoff_s), reraise=True)


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
        # One request per 1/rate seconds: a bucket of one, so requests are spaced out, never sent in bursts.
        self.limiter = AsyncLimiter(1, 1.0 / dest.rate_per_s)
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

    async def _post(self, alert: dict[str, Any]) -> None:
        dest = self.dest
        async with self.limiter:
            try:
                r = await self.client.post(dest.url, json=alert, headers=dest.headers, timeout=dest.timeout_s)
            except httpx.HTTPError as e:
                raise _Retryable(f"{type(e).__name__}: {e}") from e
        if r.status_code >= 300:
            retryable = r.status_code >= 500 or r.status_code == 429
            raise (_Retryable if retryable else _Refused)(f"HTTP {r.status_code}")

    async def _deliver(self, alert: dict[str, Any]) -> None:
        dest = self.dest
        attempt = 0
        try:
            async for attempt_state in _attempts(dest):
                attempt = attempt_state.retry_state.attempt_number
                with attempt_state:
                    try:
                        await self._post(alert)
                    except (_Retryable, _Refused) as e:
                        retry = isinstance(e, _Retryable) and attempt < dest.max_attempts
                        self.on_result(dest.name, "retried" if retry else "failed")
                        raise
            self.on_result(dest.name, "delivered")
            return
        except (_Retryable, _Refused) as e:
            error = str(e)
        log.warning("alert %s to %s failed after %d attempts (%s); dead-lettering it", alert["alert_id"],
                    dest.name, attempt, error, extra={"alert_id": alert["alert_id"], "destination": dest.name})
        self.on_result(dest.name, "dead_lettered")
        await self.on_give_up(alert, dest, error, attempt)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
