"""One batch through the core, the same for both engines (the confluent-kafka loop, worker/loop.py, and the
Faust agent, worker/faust_agent.py): prepare while the previous batch is in inference, bisect a batch that
fails down to the record that fails, replay a suspect batch one record at a time, the bookkeeping after a
batch is out, and the exit that leaves a batch uncommitted. How a batch is committed is the engine's (`commit`)."""

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from consumer.core.pipeline import ModerationPipeline, Outcome, RawRecord, dead_letter, peek_event_id
from consumer.core.publish import is_infrastructure_failure
from consumer.ops.metrics import PipelineMetrics
from consumer.worker.crash_guard import CrashLoopBreaker
from consumer.worker.explanations import ExplanationPublisher
from schemas import ErrorKind

log = logging.getLogger(__name__)

EXIT_ABANDONED = 75  # EX_TEMPFAIL: a supervisor should restart the worker

# Publishes `outcomes` and commits the input offsets after `records`, or raises: the engine's half of a batch.
Commit = Callable[[list[Outcome], list[RawRecord]], Awaitable[None]]


async def run_batch(pipeline: ModerationPipeline, breaker: CrashLoopBreaker | None, records: list[RawRecord],
                    previous: asyncio.Future | None, suspect: bool, commit: Commit) -> None:
    """One batch from its records to its committed outputs; raises when it cannot be committed. `suspect`
    (the crash-loop breaker found a record of it in flight when a worker died): one record at a time."""
    if suspect:
        await one_by_one(pipeline, breaker, records, commit)
        return
    await commit(await pipelined_outcomes(pipeline, records, previous), records)
    if breaker is not None:
        await breaker.finish(records)


async def pipelined_outcomes(pipeline: ModerationPipeline, records: list[RawRecord],
                             previous: asyncio.Future | None) -> list[Outcome]:
    """One batch's outcomes. Its preparation (fetch, hash, cache lookup, decode) runs while the previous batch
    is still in inference; they are returned only once the previous batch (its publication) is done."""
    try:
        prepared = await pipeline.prepare(records)
    except Exception:  # a bug triggered by a record: the isolating path below finds it
        log.exception("preparing a batch of %d failed; processing it record by record", len(records))
        prepared = None
    if previous is not None:
        await previous
    outcomes = None
    if prepared is not None:
        try:
            outcomes = await pipeline.finish(prepared)
        except Exception:
            log.exception("a batch of %d failed in inference; processing it again, bisecting", len(records))
    if outcomes is None:
        outcomes = await process_isolating_failures(pipeline, records)
    return outcomes


async def process_isolating_failures(pipeline: ModerationPipeline, records: list[RawRecord]) -> list[Outcome]:
    """A bug triggered by one record must not stall or crash-loop the stream: split the failing batch in
    halves until the record that fails is alone, and dead-letter just that one (log2(n) extra calls)."""
    try:
        return await pipeline.process(records)
    except Exception as e:
        if len(records) == 1:
            record = records[0]
            log.exception("record %s/%d@%d failed; dead-lettering it", record.topic, record.partition, record.offset)
            return [Outcome(record, dead_letter=dead_letter(
                record, ErrorKind.INTERNAL_ERROR, f"internal error: {type(e).__name__}: {e}"))]
        log.exception("batch of %d failed unexpectedly; bisecting it", len(records))
    half = len(records) // 2
    return (await process_isolating_failures(pipeline, records[:half])
            + await process_isolating_failures(pipeline, records[half:]))


async def one_by_one(pipeline: ModerationPipeline, breaker: CrashLoopBreaker, records: list[RawRecord],
                     commit: Commit) -> None:
    """A worker died with one of these in flight: find which, one record at a time (each published, and
    committed, on its own by `commit(outcomes, [record])`); a record it died on twice is dead-lettered."""
    for record in records:
        if (poison := await breaker.begin_alone(record)) is not None:
            outcomes = [Outcome(record, dead_letter=dead_letter(record, ErrorKind.POISON_RECORD, poison,
                                                                peek_event_id(record)))]
        else:
            outcomes = await process_isolating_failures(pipeline, [record])
        await commit(outcomes, [record])
        await breaker.finish([record])


def log_dead_letters(outcomes: list[Outcome]) -> None:
    """One line per dead letter, so an operator can find a rejected event by its id or its offset."""
    for outcome in outcomes:
        if (dl := outcome.dead_letter) is not None:
            log.info("dead letter", extra={"event_id": dl.event_id, "error_kind": dl.error_kind.value,
                                           "origin": f"{dl.origin.topic}/{dl.origin.partition}@{dl.origin.offset}",
                                           "error": dl.message})


def after_publish(outcomes: list[Outcome], pipeline: ModerationPipeline, explanations: ExplanationPublisher | None,
                  metrics: PipelineMetrics | None, started: float, counts: Counter[str]) -> None:
    """The bookkeeping once a batch's outputs are acknowledged (and, in a transaction, committed). Nothing here
    may fail the batch: its outputs are out, its offsets must commit. `started`: perf_counter() before publishing."""
    try:
        log_dead_letters(outcomes)
        if explanations is not None:
            explanations.submit(outcomes, pipeline.runtime.version)
        if metrics is not None:
            metrics.observe_stage("publish", time.perf_counter() - started)
            metrics.observe_batch(outcomes)
    except Exception:
        counts["post_publish_errors"] += 1
        log.exception("bookkeeping after publishing a batch failed; the batch stands")


async def give_up(breaker: CrashLoopBreaker | None, records: list[RawRecord], error: BaseException, reason: str,
                  backoff_s: float) -> None:
    """Exit uncommitted on `error`; the batch is consumed again after the restart. An infrastructure failure
    (the broker did not take the outputs) blames no record: its attempt is taken back from the crash-loop
    breaker. Any other error is kept for the `poison_record` dead letter of a record that fails again."""
    infrastructure = is_infrastructure_failure(error)
    log.error("%s: %s", reason, error, exc_info=not infrastructure)
    if breaker is not None:
        if infrastructure:
            await breaker.take_back(records)
        else:
            await breaker.record_error(records, error)
    abandon(f"{reason}; exiting so the batch is consumed again", backoff_s)


def abandon(reason: str, backoff_s: float) -> None:
    """Exit without committing: the batch's offsets stay where they were and it is consumed again.

    The pause first (the event loop is blocked, so nothing commits meanwhile) keeps a supervisor that
    restarts at once from turning a broker or Redis outage into a hot restart loop."""
    log.critical(reason, extra={"exit_in_s": backoff_s})
    logging.shutdown()
    time.sleep(backoff_s)
    os._exit(EXIT_ABANDONED)
