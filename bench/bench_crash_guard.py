"""The crash-loop breaker's Redis cost per batch: one command per record (as before) vs one per partition key.

    .venv/bin/python -m bench.bench_crash_guard [--batches 300 --batch 64 --rounds 3]   # -> crash_guard.json

Every batch is `begin_batch` then `finish` (what the worker does around each batch of a cache-hit run), on the
embedded stack's redis-server, records spread over 2 partitions. `per_record` is the breaker before this
change (one HINCRBY per record plus one EXPIRE per key, one HDEL per record); `per_key` is
consumer/worker/crash_guard.py as shipped (one EVAL of the increment script and one HDEL per partition key).
Reported: CPU of this process (the worker's side: redis-py packing and parsing) and wall time per batch,
best of `rounds` interleaved rounds.
"""

import argparse
import asyncio
import time
from typing import Any

from bench.common import dev_stack, table, write_result
from consumer.core.pipeline import RawRecord
from consumer.worker.crash_guard import STATE_TTL_S, CrashLoopBreaker


class PerRecordBreaker(CrashLoopBreaker):
    """The breaker's commands before: one per record."""

    async def _incr(self, records, prefix: str) -> list[int] | None:
        records = list(records)

        def fill(pipe: Any) -> None:
            for r in records:
                pipe.hincrby(self._key(r), f"{prefix}{r.offset}", 1)
            for key in {self._key(r) for r in records}:
                pipe.expire(key, STATE_TTL_S)
        replies = await self._pipeline(fill)
        return None if replies is None else [int(n) for n in replies[: len(records)]]

    async def finish(self, records) -> None:
        await self._pipeline(lambda pipe: [pipe.hdel(self._key(r), f"b{r.offset}", f"i{r.offset}", f"e{r.offset}")
                                           for r in records])


async def measure(breaker: CrashLoopBreaker, batches: int, batch: int) -> dict[str, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for n in range(batches):
        records = [RawRecord(key=None, value=b"", topic="bench", partition=i % 2, offset=n * batch + i)
                   for i in range(batch)]
        assert not await breaker.begin_batch(records)  # every batch is new: no record was in flight before
        await breaker.finish(records)
    return {"cpu_ms_per_batch": (time.process_time() - cpu) * 1000 / batches,
            "wall_ms_per_batch": (time.perf_counter() - wall) * 1000 / batches}


async def run(redis_url: str, batches: int, batch: int, rounds: int) -> dict[str, dict[str, float]]:
    best: dict[str, dict[str, float]] = {}
    for k in range(rounds):
        for name, cls in (("per_record", PerRecordBreaker), ("per_key", CrashLoopBreaker)):
            breaker = cls(redis_url, f"bench-{name}-{k}", timeout_s=2.0, retry_after_s=1.0)
            try:
                await measure(breaker, 10, batch)  # connection set up, script cached
                figures = await measure(breaker, batches, batch)
            finally:
                await breaker.close()
            assert not breaker.counts["errors"], f"{name}: redis errors during the run"
            best[name] = {m: round(min(v, best.get(name, {}).get(m, v)), 3) for m, v in figures.items()}
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with dev_stack() as stack:
        best = asyncio.run(run(stack.redis_url, args.batches, args.batch, args.rounds))
    ratio = round(best["per_record"]["cpu_ms_per_batch"] / best["per_key"]["cpu_ms_per_batch"], 2)
    table(f"crash-loop breaker, begin_batch + finish per batch of {args.batch} (best of {args.rounds})",
          ["commands", "CPU ms / batch", "wall ms / batch"],
          [[name, f["cpu_ms_per_batch"], f["wall_ms_per_batch"]] for name, f in best.items()])
    print(f"per record / per key CPU: x{ratio}")
    write_result("crash_guard", {"batch": args.batch, "batches": args.batches, "rounds": args.rounds,
                                 "partitions": 2, "results": best, "cpu_per_record_over_per_key": ratio})


if __name__ == "__main__":
    main()
