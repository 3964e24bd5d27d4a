"""Read a scenario's outputs back from the broker and check the promise: one verdict or one dead letter per id.

Outputs are read with assign() (no group, no slow join) by one consumer that stays open while the
worker works, so a scenario can also see *when* each output was written (the broker timestamps).
"""

import json
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from schemas import DeadLetter, Verdict
from testkit.records import VERDICT, RecordSet, id_of_dead_letter_original

REPORT_ENV = "MEMEGUARD_FAULTS_REPORT"  # a JSON-lines file the scenarios append their counts to


CONTENT_TOLERANCE = 1e-6


def _spread(scores: set) -> float:
    rows = [[x if x is not None else 0.0 for x in row] for row in scores]
    return max(max(col) - min(col) for col in zip(*rows, strict=True))


@dataclass
class Output:
    event_id: str | None
    out: Verdict | DeadLetter
    timestamp_ms: int
    partition: int


def output_id(o: Verdict | DeadLetter) -> str | None:
    if isinstance(o, DeadLetter) and o.event_id is None:
        return id_of_dead_letter_original(o.original_value)
    return o.event_id


class OutputReader:
    """Keeps reading the verdict and dead-letter topics from the beginning."""

    def __init__(self, bootstrap: str, verdict_topic: str, dlq_topic: str) -> None:
        self.verdict_topic = verdict_topic
        self.outputs: list[Output] = []
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "faults-reader",
                                   "enable.auto.commit": False, "auto.offset.reset": "earliest",
                                   "topic.metadata.refresh.interval.ms": 1000})
        self._topics = [verdict_topic, dlq_topic]
        self._assigned: set[tuple[str, int]] = set()

    def _assign_new_partitions(self) -> None:
        metadata = self._consumer.list_topics(timeout=10)
        new = [TopicPartition(t, p, OFFSET_BEGINNING) for t in self._topics if t in metadata.topics
               for p in metadata.topics[t].partitions if (t, p) not in self._assigned]
        if new:
            self._assigned |= {(tp.topic, tp.partition) for tp in new}
            self._consumer.incremental_assign(new)

    def poll(self, seconds: float) -> int:
        """Read for `seconds`; returns how many outputs arrived."""
        self._assign_new_partitions()
        before = len(self.outputs)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            msg = self._consumer.poll(0.1)
            if msg is None or msg.error():
                continue
            model = Verdict if msg.topic() == self.verdict_topic else DeadLetter
            o = model.model_validate(json.loads(msg.value()))
            self.outputs.append(Output(output_id(o), o, msg.timestamp()[1], msg.partition()))
        return len(self.outputs) - before

    def seen(self) -> set[str | None]:
        return {o.event_id for o in self.outputs}

    def wait_for(self, ids: set[str], timeout_s: float, settle_s: float = 1.5, log: object = None) -> None:
        """Until every id has an output (then `settle_s` more for re-deliveries in flight)."""
        deadline = time.monotonic() + timeout_s
        while not ids <= self.seen():
            if time.monotonic() > deadline:
                missing = ids - self.seen()
                raise AssertionError(f"{len(missing)} of {len(ids)} ids have no output after {timeout_s:.0f}s, "
                                     f"e.g. {sorted(missing)[:5]}\n{log() if callable(log) else ''}")
            self.poll(0.5)
        self.poll(settle_s)

    def close(self) -> None:
        self._consumer.close()


@dataclass
class Counts:
    scenario: str
    events_in: int
    verdicts: int
    dead_letters: int
    outputs: int
    duplicates_before_dedup: int
    extra: dict = field(default_factory=dict)


def audit(scenario: str, records: RecordSet, outputs: list[Output], allow_duplicates: bool = True) -> Counts:
    """Every id exactly once after de-duplication, with the expected kind; no stranger ids; identical re-scores."""
    by_id: dict[str | None, list[Verdict | DeadLetter]] = defaultdict(list)
    for o in outputs:
        by_id[o.event_id].append(o.out)
    missing = records.ids - set(by_id)
    unexpected = set(by_id) - records.ids
    assert not missing, f"{scenario}: {len(missing)} events lost, e.g. {sorted(missing)[:5]}"
    assert not unexpected, f"{scenario}: outputs for ids never sent: {sorted(map(str, unexpected))[:5]}"
    scores_by_content: dict[tuple[str, str], set] = defaultdict(set)
    for event_id, outs in by_id.items():
        want = records.expected[event_id]
        for o in outs:
            got = VERDICT if isinstance(o, Verdict) else o.error_kind.value
            assert got == want, f"{scenario}: {event_id} expected {want}, got {got}: {getattr(o, 'message', '')}"
        if want == VERDICT:
            scores = {tuple(t.score for t in o.techniques) + (o.harmful_score,) for o in outs}
            # Re-scored after a kill that fell between publish and the cache store: another batch, so the same
            # last-bits tolerance as identical content below.
            assert _spread(scores) <= CONTENT_TOLERANCE, f"{scenario}: re-processing {event_id} changed its scores"
            scores_by_content[records.content[event_id]] |= scores
        else:
            for o in outs:  # the dead letter names where its record lies and carries it unchanged
                assert o.origin.topic and o.origin.offset >= 0, f"{scenario}: {event_id} lacks its origin"
                assert o.original_truncated or o.original_value == records.values[event_id], event_id
    # Identical content under other ids: identical while the cache serves it (SET NX, first computation wins);
    # recomputed in another batch (cache down) ONNX Runtime's results differ in the last float bits (~1e-7),
    # so compare those within CONTENT_TOLERANCE.
    differing = [c for c, s in scores_by_content.items() if _spread(s) > CONTENT_TOLERANCE]
    assert not differing, f"{scenario}: same content scored differently: {differing[:3]}"
    duplicates = len(outputs) - len(by_id)
    if not allow_duplicates:
        assert duplicates == 0, f"{scenario}: {duplicates} duplicate outputs"
    return Counts(scenario, len(records.ids), sum(v == VERDICT for v in records.expected.values()),
                  sum(v != VERDICT for v in records.expected.values()), len(outputs), duplicates)


SCENARIO_STARTED = [time.monotonic()]  # reset per test by tests/conftest.py, for each scenario's wall_s


def report(counts: Counts) -> None:
    """Print the counts and, when MEMEGUARD_FAULTS_REPORT names a file, append them to it. `lost` and
    `unknown_ids` are 0 by construction: audit() fails the scenario on any lost or unknown id."""
    row = asdict(counts)
    row.update(guarantee=counts.extra.pop("guarantee", "at_least_once"), lost=counts.extra.pop("lost", 0),
               unknown_ids=0, wall_s=round(time.monotonic() - SCENARIO_STARTED[0], 1))
    row["extra"] = counts.extra
    line = json.dumps(row, sort_keys=True)
    print(f"\nfaults: {line}")
    target = os.environ.get(REPORT_ENV)
    if target:
        with Path(target).open("a") as f:
            f.write(line + "\n")


def rate_per_s(outputs: list[Output], start_ms: int, end_ms: int) -> float:
    """Outputs per second whose broker timestamp falls in [start_ms, end_ms)."""
    n = sum(start_ms <= o.timestamp_ms < end_ms for o in outputs)
    return round(n / max((end_ms - start_ms) / 1000, 1e-3), 1)
