"""The batches in flight, the same for both engines: up to `depth` at once (the next one fetched, looked up
and decoded while one is in inference), their outputs and commits in batch order because each batch waits
for the one before it (`last`) before it publishes. A suspect batch (crash-loop breaker) runs alone."""

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable

from consumer.worker.batches import abandon

log = logging.getLogger(__name__)


class InFlight:
    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._batches: deque[asyncio.Future] = deque()

    @property
    def last(self) -> asyncio.Future | None:
        """The batch the next one must wait for before publishing."""
        return self._batches[-1] if self._batches else None

    @property
    def idle(self) -> bool:
        return all(batch.done() for batch in self._batches)

    def add(self, batch: Awaitable[None]) -> None:
        """`batch` never raises: it publishes and commits, or ends the process (batches.give_up)."""
        self._batches.append(asyncio.ensure_future(batch))

    async def make_room(self, stop: asyncio.Event | None = None, alone: bool = False) -> None:
        """Until fewer than `depth` batches are in flight (none when `alone`), or `stop` is set. Shielded: a
        cancelled caller (Faust stopping its agent) does not cancel a batch half-published."""
        while self._batches and (len(self._batches) >= (1 if alone else self.depth) or self._batches[0].done()):
            oldest = self._batches[0]
            if stop is None:
                await asyncio.shield(oldest)
            else:
                stopping = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({oldest, stopping}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
                if not oldest.done():
                    return
            self._batches.popleft().result()

    async def finish(self, grace_s: float) -> None:
        """At shutdown: the batches in flight get `grace_s` to publish and commit; past it the process exits
        without committing them (they are consumed again)."""
        pending = [b for b in self._batches if not b.done()]
        if pending:
            log.info("stop requested; finishing the %d batches in flight", len(pending))
            _, late = await asyncio.wait(pending, timeout=grace_s)
            if late:
                abandon("in-flight batch could not finish before shutdown; abandoning it uncommitted", 0.0)
        self._batches.clear()
