"""The VLM explainer against a real OpenAI-compatible HTTP server on 127.0.0.1: replies, timeout,
circuit breaker, bounded concurrency."""

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from consumer.enrich.explainer import Explainer, ExplainerConfig, parse_reply


class FakeVLM(ThreadingHTTPServer):
    """Speaks just enough of /v1/chat/completions; `mode` picks its behaviour per test."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.mode = "ok"
        self.delay_s = 0.0
        self.hits = 0
        self.active = 0
        self.max_active = 0
        self.bodies: list[dict] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    server: FakeVLM

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.hits += 1
            srv.active += 1
            srv.max_active = max(srv.max_active, srv.active)
            srv.bodies.append(body)
        try:
            time.sleep(srv.delay_s)
            if self.path != "/v1/chat/completions" or srv.mode == "error":
                self._send(500, {"error": "boom"})
                return
            content = (
                '```json\n{"verdict": "harmful", "explanation": "It mocks a group by its gender."}\n```'
                if srv.mode == "ok" else "I cannot tell."
            )
            self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})
        finally:
            with srv.lock:
                srv.active -= 1

    def _send(self, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
            pass


@pytest.fixture
def vlm() -> Iterator[FakeVLM]:
    srv = FakeVLM()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


IMAGE = Image.new("RGB", (64, 48), "red")


def make(vlm: FakeVLM, **kw: object) -> Explainer:
    return Explainer(ExplainerConfig(url=vlm.url, model="test-vlm", **kw))


def test_explanation_from_the_server(vlm: FakeVLM) -> None:
    exp = asyncio.run(make(vlm).explain(IMAGE, "ONLY TWO GENDERS", "review: Smears 0.61"))
    assert exp is not None and exp.verdict == "harmful" and "gender" in exp.explanation
    assert exp.model == "test-vlm" and exp.latency_ms > 0
    msg = vlm.bodies[0]["messages"][0]["content"]
    assert vlm.bodies[0]["model"] == "test-vlm"
    assert "ONLY TWO GENDERS" in msg[0]["text"] and "Smears" in msg[0]["text"]
    assert msg[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")


def test_unstructured_reply_is_kept_as_unsure(vlm: FakeVLM) -> None:
    vlm.mode = "prose"
    exp = asyncio.run(make(vlm).explain(IMAGE, None, "review"))
    assert exp is not None and exp.verdict == "unsure" and exp.explanation == "I cannot tell."


def test_timeout_returns_none_and_counts_a_failure(vlm: FakeVLM) -> None:
    vlm.delay_s = 1.0
    ex = make(vlm, timeout_s=0.2)
    assert asyncio.run(ex.explain(IMAGE, "x", "review")) is None
    assert ex.stats.failures == 1 and ex.state == "closed"


def test_breaker_opens_then_half_opens_and_closes(vlm: FakeVLM) -> None:
    vlm.mode = "error"
    ex = make(vlm, failure_threshold=2, cooldown_s=0.3)

    async def scenario() -> None:
        assert await ex.explain(IMAGE, "x", "review") is None
        assert await ex.explain(IMAGE, "x", "review") is None
        assert ex.state == "opened"
        hits = vlm.hits
        assert await ex.explain(IMAGE, "x", "review") is None  # refused without calling the server
        assert vlm.hits == hits and ex.stats.refused == 1
        await asyncio.sleep(0.35)  # the cool-down passes: the next call is a probe (half-open)
        assert await ex.explain(IMAGE, "x", "review") is None  # the probe fails: open again
        assert vlm.hits == hits + 1 and ex.state == "opened"
        vlm.mode = "ok"
        await asyncio.sleep(0.35)
        assert await ex.explain(IMAGE, "x", "review") is not None  # the probe succeeds: closed
        assert ex.state == "closed"

    asyncio.run(scenario())


def test_connection_refused_counts_as_failure() -> None:
    ex = Explainer(ExplainerConfig(url="http://127.0.0.1:9/v1", model="m", failure_threshold=1))
    assert asyncio.run(ex.explain(IMAGE, "x", "review")) is None
    assert ex.state == "opened"


def test_concurrency_is_bounded_and_the_queue_is_capped(vlm: FakeVLM) -> None:
    vlm.delay_s = 0.2
    ex = make(vlm, max_concurrency=2, max_waiting=4)

    async def burst() -> list:
        return await asyncio.gather(*(ex.explain(IMAGE, str(i), "review") for i in range(8)))

    results = asyncio.run(burst())
    assert vlm.max_active <= 2
    assert sum(r is not None for r in results) == 6  # 2 in flight + 4 queued are served...
    assert ex.stats.refused == 2  # ...the rest are turned away at once instead of piling up


def test_breaker_refusals_do_not_reach_the_server_and_cancel_counts_as_failure(vlm: FakeVLM) -> None:
    vlm.delay_s = 1.0
    ex = make(vlm, failure_threshold=1, cooldown_s=60)

    async def scenario() -> None:
        call = asyncio.create_task(ex.explain(IMAGE, "x", "review"))
        while vlm.hits == 0:
            await asyncio.sleep(0.01)
        call.cancel()  # a caller giving up mid-call: the breaker must hear of it, or a probe would hang
        with pytest.raises(asyncio.CancelledError):
            await call
        assert ex.state == "opened"
        assert [await ex.explain(IMAGE, "x", "review") for _ in range(3)] == [None] * 3
        assert vlm.hits == 1 and ex.stats.refused == 3

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("content", "verdict"),
    [
        ('{"verdict": "not harmful", "explanation": "A joke about cats."}', "not_harmful"),
        ('Sure! {"verdict": "HARMFUL", "explanation": "Targets migrants."} Hope it helps', "harmful"),
        ('{"verdict": "maybe", "explanation": "Hard to say."}', "unsure"),
        ("This meme is not harmful.", "not_harmful"),
    ],
)
def test_parse_reply(content: str, verdict: str) -> None:
    assert parse_reply(content)[0] == verdict
