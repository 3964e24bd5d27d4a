"""Property: whatever bytes an adversary writes to the input topic, every record ends as exactly one
verdict or one dead letter, every output serialises and validates, every dead letter names its origin,
and nothing escapes as an exception (which would make the worker exit).

In-process: the real pipeline (tiny real ONNX bundle, real fetcher with a fake DNS resolver, real Redis
cache) and the real OutcomePublisher, writing to in-memory topics. Fixed seed; MEMEGUARD_HYPOTHESIS_EXAMPLES
sets the number of batches (300 in CI; the long profile in docs/operations.md runs 5000).
"""

import asyncio
import os
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from consumer.core.pipeline import RawRecord
from consumer.core.publish import OutcomePublisher
from consumer.worker.batches import process_isolating_failures
from schemas import DeadLetter, ErrorKind, Verdict
from tests.generative import keys, record_values
from tests.inprocess import MemoryTopic, build_pipeline, write_image_root

pytestmark = pytest.mark.integration
EXAMPLES = int(os.environ.get("MEMEGUARD_HYPOTHESIS_EXAMPLES", "300"))
OUTCOMES: Counter[str] = Counter()  # reported at the end of the module (the closing-note counts)


def check_batch(records: list[RawRecord], outcomes, verdicts: MemoryTopic, dlq: MemoryTopic) -> None:
    assert len(outcomes) == len(records)
    for record, outcome in zip(records, outcomes, strict=True):
        assert outcome.record is record
        assert (outcome.verdict is None) != (outcome.dead_letter is None)
    assert len(verdicts.messages) + len(dlq.messages) == len(records)
    by_offset = {r.offset: r for r in records}
    seen: set[int] = set()
    for key, value in dlq.messages:
        dl = DeadLetter.model_validate_json(value)
        assert dl.origin.topic == "raw" and dl.origin.offset in by_offset and dl.origin.offset not in seen
        seen.add(dl.origin.offset)
        record = by_offset[dl.origin.offset]
        assert key == record.key
        assert dl.original_value == (record.value or b"") or dl.original_truncated
        # A typed error for every input problem: internal_error would mean an input reached a bug.
        assert dl.error_kind != ErrorKind.INTERNAL_ERROR, dl.message
        OUTCOMES[dl.error_kind.value] += 1
    for key, value in verdicts.messages:
        v = Verdict.model_validate_json(value)
        assert key == v.post_id.encode()
        OUTCOMES["verdict"] += 1


@st.composite
def batches(draw) -> list[RawRecord]:
    n = draw(st.integers(1, 6))
    url = draw(st.sampled_from([None, "file:///{root}/meme.png", "file:///{root}/broken.jpg"]))
    return [RawRecord(key=draw(keys), value=draw(record_values(i, names=True, image_url=url)), topic="raw",
                      partition=draw(st.integers(0, 3)), offset=i) for i in range(n)]


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    return write_image_root(tmp_path_factory.mktemp("images"))


def test_every_hostile_record_ends_as_exactly_one_valid_output(stack, tiny_bundle: Path, image_root: Path) -> None:
    pipeline = build_pipeline(tiny_bundle, stack.redis_url, image_root)
    loop = asyncio.new_event_loop()

    @seed(20261202)
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(batches())
    def run(records: list[RawRecord]) -> None:
        records = [RawRecord(r.key, r.value.replace(b"{root}", str(image_root).encode().lstrip(b"/"))
                             if r.value else r.value, r.topic, r.partition, r.offset) for r in records]
        verdicts, dlq = MemoryTopic("verdicts"), MemoryTopic("dlq")

        async def one() -> list:
            outcomes = await process_isolating_failures(pipeline, records)
            await OutcomePublisher(verdicts, dlq).publish(outcomes)
            return outcomes

        check_batch(records, loop.run_until_complete(one()), verdicts, dlq)

    try:
        run()
    finally:
        loop.run_until_complete(pipeline.cache.close())
        loop.close()
        print(f"\ngenerative pipeline outcomes over {EXAMPLES} batches: {dict(sorted(OUTCOMES.items()))}")
    # The strategies must reach both ends, or the property says little.
    assert OUTCOMES["verdict"] > 0 and OUTCOMES["schema_violation"] > 0 and OUTCOMES["invalid_json"] > 0
    assert OUTCOMES["forbidden_url"] > 0


def test_generated_strings_include_lone_surrogates() -> None:
    """Guards the strategy itself: the Unicode edge cases the property relies on are generated."""
    from tests.generative import hostile_text

    found = []

    @seed(1)
    @settings(max_examples=300, database=None)
    @given(hostile_text)
    def collect(s: str) -> None:
        found.append(s)

    collect()
    assert any(any(0xD800 <= ord(c) <= 0xDFFF for c in s) for s in found)
