"""The explainer runs after the verdict is published, never on the batch's critical path.

A fresh `review` verdict is handed over with its decoded image; the explanation follows on its own topic
as a `VerdictExplanation` keyed by post id. Explanations are best-effort: when more than `max_pending`
are outstanding, new ones are skipped and counted (the verdict itself is already out).
"""

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from PIL import Image

from consumer.core.pipeline import Outcome
from consumer.core.seams import OutputTopic
from schemas import Verdict, VerdictExplanation

log = logging.getLogger(__name__)


class ExplanationPublisher:
    def __init__(self, explain: Callable[[Image.Image, str | None, str], Awaitable[Any]], topic: OutputTopic,
                 max_pending: int = 64) -> None:
        self.explain = explain
        self.topic = topic
        self.max_pending = max_pending
        self.counts: Counter[str] = Counter()
        self._tasks: set[asyncio.Task] = set()

    def submit(self, outcomes: list[Outcome], model_version: str) -> None:
        for outcome in outcomes:
            if outcome.explain_input is None or outcome.verdict is None:
                continue
            if len(self._tasks) >= self.max_pending:
                self.counts["skipped"] += 1
                continue
            image, text = outcome.explain_input
            outcome.explain_input = None  # the image is the task's now; the batch can let go of it
            task = asyncio.ensure_future(self._one(outcome.verdict, image, text, model_version))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _one(self, v: Verdict, image: Image.Image, text: str, model_version: str) -> None:
        try:
            explanation = await self.explain(image, text, f"decision {v.decision.value}; " + "; ".join(v.reasons))
            if explanation is None:
                self.counts["empty"] += 1
                return
            message = VerdictExplanation(event_id=v.event_id, post_id=v.post_id, content_hash=v.content_hash,
                                         model_version=model_version, explanation=explanation)
            await (await self.topic.send(key=v.post_id.encode(), value=message.model_dump_json().encode()))
            self.counts["published"] += 1
        except Exception:  # an explanation never affects a verdict or the stream
            self.counts["failed"] += 1
            log.exception("explanation for %s failed", v.event_id)

    async def drain(self, timeout_s: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
