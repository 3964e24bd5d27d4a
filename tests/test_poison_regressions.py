"""The records that broke "every event ends as exactly one verdict or dead letter" (issue 11), each as a
regression test named after what it broke. In-process on the real pipeline (tiny real bundle, real Redis)."""

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from consumer.core.pipeline import ModerationPipeline, Outcome, RawRecord
from consumer.core.policy import DecisionPolicy
from consumer.core.publish import OutcomePublisher
from consumer.errors import ConfigError
from consumer.kafka.topics import is_loopback, prepare_topics
from consumer.ops.metrics import PipelineMetrics
from consumer.settings import KafkaSettings, WorkerSettings
from consumer.worker.assemble import enrichment_fingerprint
from consumer.worker.batches import process_isolating_failures
from schemas import DeadLetter, Decision, ErrorKind, MemeEvent, Origin, Verdict
from tests.generative import valid_event
from tests.inprocess import MemoryTopic, build_pipeline, write_image_root

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_image_root(tmp_path_factory.mktemp("images"))


@pytest.fixture
def pipeline(stack, tiny_bundle: Path, root: Path) -> ModerationPipeline:
    import redis

    redis.Redis.from_url(stack.redis_url).flushdb()
    pipe = build_pipeline(tiny_bundle, stack.redis_url, root)
    pipe.test_loop = asyncio.new_event_loop()  # one loop per test: the Redis client stays bound to it
    yield pipe
    pipe.test_loop.run_until_complete(pipe.cache.close())
    pipe.test_loop.close()


def records(*values: bytes | None) -> list[RawRecord]:
    return [RawRecord(key=b"k%d" % i, value=v, topic="raw", partition=0, offset=i) for i, v in enumerate(values)]


def run(pipeline: ModerationPipeline, batch: list[RawRecord]) -> tuple[list[Outcome], MemoryTopic, MemoryTopic]:
    verdicts, dlq = MemoryTopic("verdicts"), MemoryTopic("dlq")

    async def go() -> list[Outcome]:
        outcomes = await process_isolating_failures(pipeline, batch)
        await OutcomePublisher(verdicts, dlq).publish(outcomes)
        return outcomes

    return pipeline.test_loop.run_until_complete(go()), verdicts, dlq


def dead_letters(dlq: MemoryTopic) -> list[DeadLetter]:
    return [DeadLetter.model_validate_json(v) for _, v in dlq.messages]


def test_lone_surrogate_event_id_no_longer_makes_an_unpublishable_dead_letter(pipeline) -> None:
    outcomes, verdicts, dlq = run(pipeline, records(b'{"event_id":"\\ud800","post_id":"p"}'))
    [dl] = dead_letters(dlq)
    assert dl.error_kind == ErrorKind.SCHEMA_VIOLATION and dl.event_id == "\\ud800"  # escaped, not dropped


def test_lone_surrogate_in_a_valid_event_is_a_schema_violation_not_a_verdict_that_cannot_serialise(pipeline) -> None:
    doc = valid_event("ev-1", None) | {"post_id": "p\ud83d", "metadata": {"k\udc00": 1}}
    outcomes, verdicts, dlq = run(pipeline, records(json.dumps(doc).encode()))
    [dl] = dead_letters(dlq)
    assert dl.error_kind == ErrorKind.SCHEMA_VIOLATION and "surrogate" in dl.message and not verdicts.messages


def test_dead_letter_that_cannot_serialise_is_replaced_by_the_last_resort_one() -> None:
    record = records(b"\x00raw")[0]
    # model_construct skips the validators that make text safe: a bug of that kind must still end well.
    broken = DeadLetter.model_construct(event_id="\udfff", error_kind=ErrorKind.SCHEMA_VIOLATION, message="\ud800",
                                        origin=Origin(topic="raw", partition=0, offset=0), original_key=b"k0",
                                        original_value=b"\x00raw", original_truncated=False, attempts=1,
                                        schema_version="1.0", failed_at=datetime.now(UTC))
    verdicts, dlq = MemoryTopic("verdicts"), MemoryTopic("dlq")
    publisher = OutcomePublisher(verdicts, dlq)
    asyncio.run(publisher.publish([Outcome(record, dead_letter=broken)]))
    [dl] = dead_letters(dlq)
    assert dl.original_value == b"\x00raw" and dl.event_id is None and "could not be serialised" in dl.message
    assert publisher.counts["last_resort_dead_letters"] == 1


def test_naive_created_at_is_read_as_utc_so_latency_metrics_no_longer_raise(pipeline) -> None:
    doc = valid_event("ev-naive", None) | {"created_at": "2024-05-01T10:00:00"}
    assert MemeEvent.model_validate(doc).created_at == datetime(2024, 5, 1, 10, tzinfo=UTC)
    outcomes, verdicts, dlq = run(pipeline, records(json.dumps(doc).encode()))
    [verdict] = [Verdict.model_validate_json(v) for _, v in verdicts.messages]
    assert verdict.event_created_at == datetime(2024, 5, 1, 10, tzinfo=UTC)
    PipelineMetrics("test-naive").observe_batch(outcomes)  # raised TypeError before


@pytest.mark.parametrize("value", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 20_000 + b"1" + b"}" * 20_000],
                         ids=["array", "object"])
def test_deeply_nested_json_is_invalid_json_not_internal_error(pipeline, value: bytes) -> None:
    outcomes, _, dlq = run(pipeline, records(value))
    assert [d.error_kind for d in dead_letters(dlq)] == [ErrorKind.INVALID_JSON]


def test_deeply_nested_metadata_is_a_schema_violation(pipeline) -> None:
    nested: list = []
    for _ in range(500):
        nested = [nested]
    doc = valid_event("ev-deep", None) | {"metadata": {"x": nested}}
    _, _, dlq = run(pipeline, records(json.dumps(doc).encode()))
    [dl] = dead_letters(dlq)
    assert dl.error_kind == ErrorKind.SCHEMA_VIOLATION and "nested deeper" in dl.message


def test_null_value_tombstone_is_a_dead_letter_not_a_crash(pipeline) -> None:
    _, _, dlq = run(pipeline, records(None))
    [dl] = dead_letters(dlq)
    assert dl.error_kind == ErrorKind.INVALID_JSON and dl.original_value == b"" and "null" in dl.message


@pytest.mark.parametrize(("url", "kind"), [
    ("http://[::1", ErrorKind.FORBIDDEN_URL),
    ("http://a..b/", ErrorKind.FORBIDDEN_URL),
    ("file:///x%00", ErrorKind.FORBIDDEN_URL),  # outside the root, and a NUL in a path is never a file
])
def test_untyped_fetch_errors_get_their_kind_and_do_not_bisect_the_batch(pipeline, url: str, kind) -> None:
    calls = []
    real = pipeline.process

    async def counting(batch):
        calls.append(len(batch))
        return await real(batch)

    pipeline.process = counting
    good = json.dumps(valid_event("ev-good", None)).encode()
    bad = json.dumps(valid_event("ev-bad", url)).encode()
    outcomes, verdicts, dlq = run(pipeline, records(good, bad))
    assert calls == [2]  # one call: no fallback, no second fetch
    assert [d.error_kind for d in dead_letters(dlq)] == [kind] and len(verdicts.messages) == 1


def test_failing_batch_is_bisected_instead_of_retried_record_by_record(pipeline) -> None:
    calls = []
    real = pipeline.process

    async def buggy(batch):
        calls.append(len(batch))
        if any(r.value == b"BUG" for r in batch):
            raise RuntimeError("a bug nobody found yet")
        return await real(batch)

    pipeline.process = buggy
    good = [json.dumps(valid_event(f"ev-{i}", None)).encode() for i in range(15)]
    outcomes, verdicts, dlq = run(pipeline, records(*good[:9], b"BUG", *good[9:]))
    [dl] = dead_letters(dlq)
    assert dl.error_kind == ErrorKind.INTERNAL_ERROR and dl.origin.offset == 9 and len(verdicts.messages) == 15
    assert len(calls) <= 2 * 4 + 1  # log2(16) levels of two halves, not 16 single-record calls


def test_cache_hit_copies_carry_the_new_events_ids_and_times(pipeline) -> None:
    first = valid_event("ev-a", None) | {"author_id": "alice", "created_at": "2024-01-01T00:00:00+00:00"}
    run(pipeline, records(json.dumps(first).encode()))
    repost = valid_event("ev-b", None) | {"post_id": "post-b", "author_id": "bob",
                                            "created_at": "2024-06-01T00:00:00+00:00"}
    before = datetime.now(UTC)
    _, verdicts, _ = run(pipeline, records(json.dumps(repost).encode()))
    [v] = [Verdict.model_validate_json(x) for _, x in verdicts.messages]
    assert v.cached and (v.event_id, v.post_id, v.author_id) == ("ev-b", "post-b", "bob")
    assert v.event_created_at == datetime(2024, 6, 1, tzinfo=UTC) and v.created_at >= before - timedelta(seconds=1)
    assert v.model == pipeline.runtime.model_info


def test_decision_policy_change_applies_to_cache_hits_at_once(pipeline) -> None:
    doc = valid_event("ev-p1", None)
    _, verdicts, _ = run(pipeline, records(json.dumps(doc).encode()))
    [before] = [Verdict.model_validate_json(x) for _, x in verdicts.messages]
    # A policy under which nothing the tiny model says can go to review or block.
    pipeline.policy_override = DecisionPolicy(review_min_flags=0, severe_techniques=[], harm_block=1.0,
                                              harm_review=1.0, technique_review_min_score=1.0)
    _, verdicts, _ = run(pipeline, records(json.dumps(valid_event("ev-p2", None)).encode()))
    [after] = [Verdict.model_validate_json(x) for _, x in verdicts.messages]
    assert after.cached and after.decision == Decision.ALLOW
    assert [t.score for t in after.techniques] == [t.score for t in before.techniques]


def test_enrichment_settings_key_their_own_cache_entries(tmp_path: Path) -> None:
    options = tmp_path / "enrich.yaml"
    options.write_text("ocr: {}\n")
    plain = enrichment_fingerprint(WorkerSettings(enrich_stages=[]))
    ocr = enrichment_fingerprint(WorkerSettings(enrich_stages=["ocr"]))
    ocr_options = enrichment_fingerprint(WorkerSettings(enrich_stages=["ocr"], enrich_options_file=options))
    explainer_only = enrichment_fingerprint(WorkerSettings(enrich_stages=["explainer"]))
    assert plain == explainer_only == "" and len({plain, ocr, ocr_options}) == 3


def test_topics_are_created_only_on_a_development_broker_unless_asked(stack) -> None:
    assert is_loopback("127.0.0.1:9092,localhost:9093,[::1]:9094") and not is_loopback("kafka-0.kafka:9092")
    name = f"never-created-{datetime.now(UTC).timestamp():.0f}"
    with pytest.raises(ConfigError, match="MEMEGUARD_CREATE_TOPICS"):
        prepare_topics(KafkaSettings(kafka_bootstrap=stack.bootstrap, create_topics="never"), [name])
    prepare_topics(KafkaSettings(kafka_bootstrap=stack.bootstrap, create_topics="auto", topic_partitions=2), [name])
    prepare_topics(KafkaSettings(kafka_bootstrap=stack.bootstrap, create_topics="never"), [name])  # exists now


def test_a_restarted_worker_removes_its_stale_ready_file_before_anything_else(tmp_path: Path, tiny_bundle) -> None:
    import os
    import subprocess
    import sys

    from consumer.devinfra.stack import free_port

    ready = tmp_path / "worker.ready"
    ready.touch()  # left by the previous container
    env = {**os.environ, "MEMEGUARD_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}", "MEMEGUARD_STARTUP_TIMEOUT_S": "1",
           "MEMEGUARD_READY_FILE": str(ready), "MEMEGUARD_BUNDLE_PATH": str(tiny_bundle)}
    proc = subprocess.run([sys.executable, "-m", "consumer.cli", "worker"], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 2 and b"unreachable" in proc.stdout + proc.stderr
    assert not ready.exists()


def test_png_with_a_text_chunk_that_inflates_to_200_mb_is_undecodable_not_an_oom(pipeline) -> None:
    import base64
    import io
    import struct
    import zlib

    from PIL import Image

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, "PNG")
    png = buf.getvalue()
    bomb = png[:33] + chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(b"A" * 200_000_000, 9)) + png[33:]
    doc = valid_event("ev-ztxt", None) | {"image_b64": base64.b64encode(bomb).decode()}
    _, verdicts, dlq = run(pipeline, records(json.dumps(doc).encode()))
    [dl] = dead_letters(dlq)
    assert dl.error_kind == ErrorKind.IMAGE_UNDECODABLE and not verdicts.messages


def test_symlink_under_the_root_pointing_outside_is_forbidden(pipeline, root: Path) -> None:
    link = root / "escape.png"
    link.unlink(missing_ok=True)
    link.symlink_to("/etc/passwd")
    doc = valid_event("ev-link", link.as_uri())
    _, _, dlq = run(pipeline, records(json.dumps(doc).encode()))
    [dl] = dead_letters(dlq)
    assert dl.error_kind == ErrorKind.FORBIDDEN_URL and "outside the allowed root" in dl.message


@pytest.mark.parametrize("fmt,size", [("PNG", (1, 40_000)), ("PNG", (40_000, 1)), ("JPEG", (1, 60_000)),
                                      ("JPEG", (60_000, 2)), ("WEBP", (16_000, 1)), ("GIF", (1, 30_000))])
def test_a_one_pixel_wide_image_is_a_verdict_not_an_internal_error(pipeline, fmt: str, size: tuple[int, int]) -> None:
    """Legal images far under the pixel cap whose aspect ratio makes a naive resize (or a reduced-scale JPEG
    decode) round a side to 0 pixels: they are memes to score, not failures. Probed 2026-12; it held already."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, fmt)
    doc = valid_event(f"ev-thin-{fmt}-{size[0]}", None) | {"image_b64": base64.b64encode(buf.getvalue()).decode()}
    _, verdicts, dlq = run(pipeline, records(json.dumps(doc).encode()))
    assert dead_letters(dlq) == [] and len(verdicts.messages) == 1


def test_the_bundle_in_use_decides_with_its_own_policy_and_says_so(pipeline, tmp_path) -> None:
    from consumer.core.runtime import BundleRuntime
    from exporters.testing import write_tiny_bundle

    # A hot reload swaps model and policy together: the harm bundle's policy, then the older bundle's rules.
    pipeline.policy_override = None
    harm = BundleRuntime.load(write_tiny_bundle(tmp_path / "harm", seed=2, severity_head=True), providers="cpu")
    original, pipeline.runtime = pipeline.runtime, harm
    _, verdicts, _ = run(pipeline, records(json.dumps(valid_event("ev-h1", None)).encode()))
    [v] = [Verdict.model_validate_json(x) for _, x in verdicts.messages]
    assert v.policy_id == "tiny-harm-v1" and v.harmful_score is not None
    assert v.severity in ("not harmful", "somewhat harmful", "very harmful") and len(v.severity_scores) == 3
    expected = harm.manifest.policy.decide(v.techniques, v.harmful_score, v.severity_scores)
    assert (v.decision, v.reasons) == expected
    pipeline.runtime = original
    _, verdicts, _ = run(pipeline, records(json.dumps(valid_event("ev-h2", None)).encode()))
    [v] = [Verdict.model_validate_json(x) for _, x in verdicts.messages]
    assert v.policy_id == DecisionPolicy().id and v.severity is None
    # A deployment's override file wins over the bundle, and is named.
    pipeline.policy_override, pipeline.runtime = DecisionPolicy(id="file:ops.yaml"), harm
    _, verdicts, _ = run(pipeline, records(json.dumps(valid_event("ev-h3", None)).encode()))
    assert Verdict.model_validate_json(verdicts.messages[0][1]).policy_id == "file:ops.yaml"
