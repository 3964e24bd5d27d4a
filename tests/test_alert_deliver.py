"""Webhook delivery rules (consumer/alert/deliver.py), against httpx's in-process transport: which answers are
retried, when an alert is dead-lettered, what is counted, and that every request passes the rate limiter."""

import asyncio
from collections import Counter
from typing import Any

import httpx

from consumer.alert.deliver import Webhook, _attempts
from consumer.alert.rules import Destination


def deliver(answers: list[int | Exception], **dest: Any) -> tuple[int, Counter[str], list[tuple[str, int]]]:
    """Posts one alert; the receiver gives `answers` in turn (the last one repeats). Returns the number of
    requests, the on_result counts and the dead letters (error, attempts)."""
    requests: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        answer = answers[min(len(requests), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer)

    counts: Counter[str] = Counter()
    letters: list[tuple[str, int]] = []

    async def give_up(alert: dict, d: Destination, error: str, attempts: int) -> None:
        letters.append((error, attempts))

    async def main() -> None:
        d = Destination(name="d", url="http://127.0.0.1:9/hook", backoff_s=0.001, max_backoff_s=0.002,
                        rate_per_s=10_000, **dest)
        async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as client:
            hook = Webhook(d, client, give_up, lambda name, result: counts.update([result])).start()
            await (await hook.submit({"alert_id": "a1"}))
            await hook.close()

    asyncio.run(main())
    return len(requests), counts, letters


def test_5xx_then_success_is_retried_and_delivered():
    sent, counts, letters = deliver([500, 503, 200], max_attempts=5)
    assert sent == 3 and counts == Counter(retried=2, delivered=1) and letters == []


def test_429_and_connection_errors_are_retried():
    sent, counts, letters = deliver([429, httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), 204])
    assert sent == 4 and counts == Counter(retried=3, delivered=1) and letters == []


def test_gives_up_after_max_attempts_and_dead_letters():
    sent, counts, letters = deliver([500], max_attempts=3)
    assert sent == 3
    assert counts == Counter(retried=2, failed=1, dead_lettered=1)
    assert letters == [("HTTP 500", 3)]


def test_other_4xx_is_not_retried():
    sent, counts, letters = deliver([404, 200], max_attempts=5)
    assert sent == 1 and counts == Counter(failed=1, dead_lettered=1) and letters == [("HTTP 404", 1)]


def test_connection_error_text_reaches_the_dead_letter():
    sent, _, letters = deliver([httpx.ConnectError("refused")], max_attempts=2)
    assert sent == 2 and letters == [("ConnectError: refused", 2)]


def test_backoff_is_capped_and_jittered():
    d = Destination(name="d", url="http://127.0.0.1:9/", backoff_s=1.0, max_backoff_s=5.0)
    wait = _attempts(d).wait

    class State:  # the one field tenacity's exponential wait reads
        def __init__(self, n: int) -> None:
            self.attempt_number = n

    first = [wait(State(1)) for _ in range(50)]
    assert all(1.0 <= w <= 2.0 for w in first) and len(set(first)) > 1  # base delay plus jitter, not in lockstep
    assert all(wait(State(10)) == 5.0 for _ in range(10))  # never above max_backoff_s


def test_every_request_takes_the_one_rate_limit_slot():
    """Counted, not timed: the limiter holds one request at a time, and each post drew from it."""

    async def main() -> tuple[bool, bool]:
        d = Destination(name="d", url="http://127.0.0.1:9/", rate_per_s=0.001)  # one slot per 1000 s
        async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200))) as client:
            hook = Webhook(d, client, lambda *a: asyncio.sleep(0))
            before = hook.limiter.has_capacity()
            await hook._deliver({"alert_id": "a1"})
            return before, hook.limiter.has_capacity()

    before, after = asyncio.run(main())
    assert before and not after  # a second request now would have to wait for the slot
