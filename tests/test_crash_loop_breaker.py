"""The crash-loop breaker, with a bug injected (tests/crashing_worker.py): a record that kills the worker
process is dead-lettered as `poison_record` on the third start instead of killing it forever, and the
records around it still get their verdicts. Real worker processes, real broker, real Redis."""

import json
import time

import pytest

from schemas import DeadLetter, ErrorKind, Verdict
from tests.kafka_helpers import produce_raw, wait_outputs
from tests.memes import event

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("engine", ["faust", "confluent"])
def test_a_record_that_kills_the_worker_twice_is_dead_lettered_as_poison_on_the_next_start(worker_factory, stack,
                                                                                          topics, engine) -> None:
    good = [event(f"ev-{i}", text=f"meme {i}") for i in range(6)]
    crash = event("ev-crash", text="CRASH-ME")
    records = [(b"same-partition", e.model_dump_json().encode()) for e in [*good[:3], crash, *good[3:]]]
    produce_raw(stack.bootstrap, topics.input, records)

    worker = worker_factory(MEMEGUARD_RESTART_BACKOFF_S="0", MEMEGUARD_MAX_WAIT_S="1.0", MEMEGUARD_WORKER_ENGINE=engine)
    worker.argv = ["tests/crashing_worker.py"]
    exits = []
    t0 = time.monotonic()
    for _ in range(4):  # a supervisor that restarts at once (the worst case for a crash loop)
        worker.start(wait_ready=False)
        deadline = time.monotonic() + 90
        while worker.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            if worker.ready_file.exists() and _all_out(stack, topics, good, crash):
                break
        if worker.proc.poll() is None:
            break
        exits.append(worker.proc.returncode)
        print(f"start {len(exits)} exited {worker.proc.returncode} at {time.monotonic() - t0:.1f}s")
    assert exits == [70, 70], worker.log()

    outputs = wait_outputs(stack.bootstrap, topics, {e.event_id for e in [*good, crash]})
    kinds = {o.event_id: ("verdict" if isinstance(o, Verdict) else o.error_kind) for o in outputs}
    assert kinds == {**{e.event_id: "verdict" for e in good}, "ev-crash": ErrorKind.POISON_RECORD}
    [poison] = [o for o in outputs if isinstance(o, DeadLetter)]
    assert json.loads(poison.original_value)["event_id"] == "ev-crash" and "exited twice" in poison.message
    assert worker.proc.poll() is None, "the worker must keep running after dead-lettering the poison record"


def _all_out(stack, topics, good, crash) -> bool:
    from consumer.kafka.outputs import read_outputs

    seen = {o.event_id for o in read_outputs(stack.bootstrap, topics.output, topics.dlq, idle_timeout_s=0.5,
                                             deadline_s=5)}
    return {e.event_id for e in [*good, crash]} <= seen
