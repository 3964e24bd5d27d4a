"""Ask a vision-language model, over an OpenAI-compatible `/v1/chat/completions` endpoint (vLLM,
TGI, Ollama, hosted APIs), for a zero-shot verdict and a one-paragraph explanation.

Only memes the fast model sends to review get here, so this is never on the hot path for `allow`.
A slow or dead endpoint must not hold the worker up: each call has a deadline, concurrency is
bounded (and callers beyond a small queue are turned away at once), and after repeated failures a
circuit breaker (purgatory) stops calling until a cool-down has passed, then lets a probe through.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import time
from dataclasses import dataclass

import httpx
from PIL import Image
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState
from purgatory.service._async.circuitbreaker import AsyncCircuitBreaker

from consumer.enrich.base import StageConfig
from schemas.enrichment import Explanation

log = logging.getLogger(__name__)

PROMPT = (
    "You are assisting a content moderator. Look at this meme (image and overlaid text) and decide "
    "whether it is harmful: hateful, harassing, or using propaganda techniques against a person or group.\n"
    "Caption text: {text}\n"
    "An automatic classifier said: {summary}\n"
    'Answer with JSON only: {{"verdict": "harmful" | "not_harmful" | "unsure", '
    '"explanation": "<one paragraph: what the meme says, who it targets, and why>"}}'
)
VERDICTS = ("harmful", "not_harmful", "unsure")
CIRCUIT = "explainer"
# What a failing endpoint looks like; anything else is a bug and propagates.
FAILURES = (TimeoutError, httpx.HTTPError, KeyError, IndexError, TypeError, ValueError)


class ExplainerConfig(StageConfig):
    url: str  # base URL up to and including /v1, e.g. http://127.0.0.1:8000/v1
    model: str
    api_key: str | None = None
    timeout_s: float = 20.0
    max_concurrency: int = 2
    max_waiting: int = 16  # callers queued beyond those in flight; more get None at once, no pile-up
    failure_threshold: int = 3
    cooldown_s: float = 30.0
    max_tokens: int = 300
    image_max_side: int = 768  # VLMs resize anyway; smaller uploads keep latency down


@dataclass
class ExplainerStats:
    calls: int = 0
    failures: int = 0
    refused: int = 0  # breaker open or queue full


def image_data_url(image: Image.Image, max_side: int) -> str:
    img = image.convert("RGB")
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def parse_reply(content: str) -> tuple[str, str]:
    """Models wrap JSON in prose or code fences; take the first {...} that parses, else the text."""
    match = re.search(r"\{.*\}", content, re.DOTALL)
    if match:
        try:
            obj = json.loads(match.group(0))
            verdict = str(obj.get("verdict", "unsure")).strip().lower().replace(" ", "_").replace("-", "_")
            explanation = str(obj.get("explanation", "")).strip()
            if explanation:
                return (verdict if verdict in VERDICTS else "unsure"), explanation
        except (json.JSONDecodeError, AttributeError):
            pass
    lowered = content.lower()
    verdict = "not_harmful" if "not harmful" in lowered or "not_harmful" in lowered else (
        "harmful" if "harmful" in lowered else "unsure"
    )
    return verdict, content.strip()


class Explainer:
    def __init__(self, config: ExplainerConfig) -> None:
        self.config = config
        # purgatory: opens after failure_threshold failures in a row, refuses calls for cooldown_s, then half-opens.
        self.breakers = AsyncCircuitBreakerFactory(default_threshold=config.failure_threshold,
                                                   default_ttl=config.cooldown_s)
        self._breaker: AsyncCircuitBreaker | None = None  # the in-memory breaker, once made (its state is shared)
        self.stats = ExplainerStats()
        self._sem: asyncio.Semaphore | None = None
        self._sem_loop: asyncio.AbstractEventLoop | None = None
        self._admitted = 0

    def _semaphore(self) -> asyncio.Semaphore:
        # asyncio primitives bind to the loop that first waits on them; make one per loop.
        loop = asyncio.get_running_loop()
        if self._sem is None or self._sem_loop is not loop:
            self._sem, self._sem_loop = asyncio.Semaphore(self.config.max_concurrency), loop
        return self._sem

    def request_body(self, image: Image.Image, text: str | None, verdict_summary: str) -> dict:
        url = image_data_url(image, self.config.image_max_side)
        prompt = PROMPT.format(text=(text or "(none)").strip()[:2000], summary=verdict_summary)
        return {
            "model": self.config.model,
            "temperature": 0.0,
            "max_tokens": self.config.max_tokens,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": prompt},
                        {"type": "image_url", "image_url": {"url": url}},
                    ],
                }
            ],
        }

    async def explain(self, image: Image.Image, text: str | None, verdict_summary: str) -> Explanation | None:
        """The model's verdict and explanation, or None when the endpoint is failing, slow or busy."""
        c = self.config
        if self._admitted >= c.max_concurrency + c.max_waiting:
            self.stats.refused += 1
            return None
        self._admitted += 1  # in flight or queued; counted before any await so a burst sees it
        try:
            self._breaker = breaker = await self.breakers.get_breaker(CIRCUIT)
            async with breaker:  # raises OpenedState at once while the circuit is open
                # JPEG-encoding the image takes a few ms: keep it off the event loop.
                body = await asyncio.to_thread(self.request_body, image, text, verdict_summary)
                async with self._semaphore():
                    return await self._call(body)
        except OpenedState:
            self.stats.refused += 1
            return None
        except FAILURES as e:  # counted by the breaker on the way out of its block (a cancel counts too)
            self.stats.failures += 1
            log.warning("explainer call to %s failed (%s: %s); breaker %s", c.url, type(e).__name__, e, self.state)
            return None
        finally:
            self._admitted -= 1

    async def _call(self, body: dict) -> Explanation:
        c = self.config
        headers = {"Authorization": f"Bearer {c.api_key}"} if c.api_key else {}
        self.stats.calls += 1
        started = time.perf_counter()
        async with asyncio.timeout(c.timeout_s):
            async with httpx.AsyncClient(timeout=c.timeout_s) as client:
                endpoint = f"{c.url.rstrip('/')}/chat/completions"
                resp = await client.post(endpoint, json=body, headers=headers)
                resp.raise_for_status()
                content = resp.json()["choices"][0]["message"]["content"]
        verdict, explanation = parse_reply(str(content))
        return Explanation(
            verdict=verdict, explanation=explanation, model=c.model,
            latency_ms=(time.perf_counter() - started) * 1000.0,
        )

    @property
    def state(self) -> str:
        """purgatory's state: "closed", "opened" (until the first call after the cool-down) or "half-opened"."""
        return self._breaker.context.state if self._breaker is not None else "closed"
