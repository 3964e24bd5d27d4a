"""Property of the control plane's topic readers (issue 27, item 4): review ingest, `dataset build` and
`compare`. Whatever an adversary writes on the topics they read (arbitrary keys, values and headers,
tombstones, deep nesting, huge numbers, wrong types, mutated records, signatures lifted or made with another
key), every record is validated against its schema, what does not fit is skipped and counted, and the reader
never raises, never reads a batch forever and never stops: the valid records among them (anchors) all arrive.
In process over many examples, then through each consumer on the real broker (and redis-server) with fewer."""

import json
import uuid
from collections import Counter

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from consumer.kafka.topic_reader import Record
from consumer.kafka.topics import ensure_topics
from consumer.learning.compare import compare_topics, compare_verdicts, format_comparison, latest_by_event
from consumer.learning.dataset import Sources, build_dataset
from consumer.learning.reviews import ACCEPTED, REFUSED, ReviewAuth
from consumer.review.ingest import RESULTS, ReviewIngest
from consumer.review.store import ReviewStore
from schemas.review import REVIEW_RECORD, canonical_review, review_signature
from tests.generative import WRONG_TYPES, headers, hostile_text, json_docs, keys, record_values, timestamps
from tests.test_reviews_authentic import FLAGGED, KEY, OTHER_KEY, meme, policy, produce, review

HUGE_NUMBERS = [2**63 - 1, 2**63, -(2**63) - 1, 10**30, 10**300, -1, 0, 1e308, -0.0]
DEEP = [b"[" * 50_000 + b"]" * 50_000, b'{"a":' * 5_000 + b"1" + b"}" * 5_000, b"[" * 50_000]
field_values = st.one_of(hostile_text, WRONG_TYPES, json_docs, timestamps, st.sampled_from(HUGE_NUMBERS),
                         st.integers(1, 500).map(lambda n: json.loads("[" * n + "]" * n)),
                         st.sampled_from(["x" * 5000, "a" * 64, "review", "retraction", "block", "Smears"]))


def text(draw, doc: object) -> bytes:
    try:
        return json.dumps(doc, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        return b'{"event_id":' + b"9" * 5000 + b"}"


@st.composite
def mutated(draw, doc: dict, fields: list[str]) -> dict:
    doc = dict(doc)
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from([*fields, "unknown", "signature"]))
        if draw(st.booleans()):
            doc.pop(field, None)
        else:
            doc[field] = draw(field_values)
    return doc


@st.composite
def hostile_value(draw, valid: dict) -> bytes | None:
    """Not the valid record itself: a mutation of it, other JSON, bytes, a tombstone, deep nesting, a huge number."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "json", "bytes", "null", "nested", "huge",
                                 "wrong_top"]))
    if kind == "mutated":
        return text(draw, draw(mutated(valid, list(valid))))
    if kind == "json":
        return text(draw, draw(json_docs))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "null":
        return None
    if kind == "nested":
        return draw(st.sampled_from(DEEP))
    if kind == "huge":
        field = draw(st.sampled_from(list(valid))).encode()
        return b'{"' + field + b'":' + b"9" * draw(st.sampled_from([19, 20, 400, 5_000])) + b"}"
    return text(draw, draw(st.sampled_from([[valid], "x", 1, None, True])))


def signed_value(doc: dict, key: bytes, topic: str) -> bytes:
    try:
        return canonical_review({**doc, "signature": review_signature(key, topic, doc)})
    except (ValueError, RecursionError):  # NaN / infinity / deep: no signer produces these
        return json.dumps(doc).encode("utf-8", "surrogatepass")


@st.composite
def review_value(draw, n: str, topic: str) -> tuple[bytes | None, bool]:
    """A reviews-topic record value and whether the key signed it as it is (an anchor the reader must take)."""
    _e, v = meme(f"victim-{n}", 1)
    doc = review(v, "alice", draw(st.sampled_from(["confirm", "overturn"])), 0)
    kind = draw(st.sampled_from(["anchor", "hostile", "hostile", "signed_mutated", "other_key", "lifted",
                                 "unsigned"]))
    if kind == "anchor":
        return signed_value(doc, KEY, topic), True
    if kind == "signed_mutated":  # a key holder's mistake: signed, yet not a review
        return signed_value(draw(mutated(doc, list(doc))), KEY, topic), False
    if kind == "other_key":
        return signed_value(doc, OTHER_KEY, topic), False
    if kind == "lifted":  # a real signature on another message
        lifted = json.loads(signed_value(doc, KEY, topic))
        lifted["moderator"] = draw(hostile_text)
        return text(draw, lifted), False
    if kind == "unsigned":
        return json.dumps(doc).encode(), False
    return draw(hostile_value(doc)), False


def test_the_review_reader_takes_any_bytes_in_process() -> None:
    auth = ReviewAuth(KEY, False)

    @seed(20261207)
    @settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data) -> None:
        value, anchor = data.draw(review_value("0", "memes.reviews"))
        message, result = auth.read("memes.reviews", value)
        assert result in ACCEPTED + REFUSED
        assert (message is not None) == (result == "verified")
        if anchor:
            assert result == "verified", value
        if message is not None:  # only what the key signed, and it fits the schema
            doc = json.loads(value)
            assert doc.pop("signature") == review_signature(KEY, "memes.reviews", doc)
            assert REVIEW_RECORD.validate_python(doc) == message

    run()


@st.composite
def verdict_values(draw, tag: str, n: int) -> tuple[bytes | None, bool]:
    _e, v = meme(tag, n)
    valid = json.loads(v.model_dump_json())
    if draw(st.integers(0, 3)) == 0:
        return v.model_dump_json().encode(), True
    return draw(hostile_value(valid)), False


def fixed_verdicts(tag: str) -> list[bytes | None]:
    """Always in a batch: what crashed the readers before (a time without an offset next to one with it for the
    same event; a tombstone; deep nesting; a year-1 time)."""
    _e, v = meme(tag, 0)
    doc = json.loads(v.model_dump_json())
    return [json.dumps({**doc, "created_at": "2026-12-07T11:00:00"}).encode(), None, DEEP[0],
            json.dumps({**doc, "created_at": "0001-01-01T00:00:00+14:00"}).encode()]


def test_compare_takes_any_verdict_records_in_process() -> None:
    @seed(20261207)
    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data) -> None:
        sides = []
        for side in ("p", "s"):
            drawn = [data.draw(verdict_values("cmp", i)) for i in range(data.draw(st.integers(0, 12)))]
            values = [v for v, _ in drawn] + fixed_verdicts("cmp")
            records = [Record(side, 0, i, None, value, 0) for i, value in enumerate(values)]
            counts: Counter[str] = Counter()
            latest = latest_by_event(records, counts)
            assert counts["verdicts"] + counts["invalid"] == len(records)
            assert {meme("cmp", i)[1].event_id for i, (_, a) in enumerate(drawn) if a} <= set(latest)
            sides.append(latest)
        report = compare_verdicts(*sides)
        json.dumps(report)
        format_comparison(report)

    run()


@pytest.mark.integration
def test_generated_hostile_records_through_compare_on_the_broker(stack) -> None:
    @seed(20261207)
    @settings(max_examples=2, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data) -> None:
        tag = uuid.uuid4().hex[:8]
        topics = [f"cmp-prod-{tag}", f"cmp-shadow-{tag}"]
        ensure_topics(stack.bootstrap, topics, 1)
        anchors = set()
        for topic in topics:
            drawn = [data.draw(verdict_values(tag, i)) for i in range(30)]
            anchors |= {meme(tag, i)[1].event_id for i, (_, a) in enumerate(drawn) if a}
            produce(stack.bootstrap, topic, [(data.draw(keys), v, data.draw(headers), None)
                                             for v in [v for v, _ in drawn] + fixed_verdicts(tag)])
        report = compare_topics(stack.bootstrap, *topics)
        assert report["invalid_records"]["production"] >= 2 and report["invalid_records"]["shadow"] >= 2
        assert report["production_verdicts"] >= 1
        json.dumps(report)
        format_comparison(report)

    run()


@pytest.mark.integration
def test_generated_hostile_records_through_the_review_ingest(stack) -> None:
    """Input events and verdicts, hostile and valid mixed: the ingest reads every record once (no rewind),
    counts each, and queues every valid `review` verdict whose event arrived."""
    examples: list[int] = []

    @seed(20261207)
    @settings(max_examples=2, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data) -> None:
        tag = uuid.uuid4().hex[:8]
        raw, out = f"ing-raw-{tag}", f"ing-verdicts-{tag}"
        ensure_topics(stack.bootstrap, [raw, out], 1)
        inputs, verdicts, anchors = [], [], []
        for i in range(25):
            event, v = meme(tag, i)
            if data.draw(st.integers(0, 2)) == 0:  # an anchor: its event and its verdict, both valid
                inputs.append(json.dumps(event).encode())
                verdicts.append(v.model_dump_json().encode())
                anchors.append(v.event_id)
            else:
                inputs.append(data.draw(record_values(i, False, None)))
                verdicts.append(data.draw(hostile_value(json.loads(v.model_dump_json()))))
        inputs += [None, DEEP[0], DEEP[1]]
        verdicts += fixed_verdicts(tag)
        produce(stack.bootstrap, raw, [(data.draw(keys), v, data.draw(headers), None) for v in inputs])
        produce(stack.bootstrap, out, [(data.draw(keys), v, data.draw(headers), None) for v in verdicts])
        store = ReviewStore(stack.redis_url, prefix=f"gen-{tag}:")
        ingest = ReviewIngest(stack.bootstrap, f"gen-review-{tag}", raw, out, store)
        total = ingest.drain(idle_polls=2, timeout_s=30)
        assert total == len(inputs) + len(verdicts)  # each once: nothing was read again
        assert sum(ingest.counts.values()) == total and set(ingest.counts) <= set(RESULTS)
        assert ingest.counts["invalid"] >= 5
        assert set(anchors) <= set(store.pending(1000))
        examples.append(total)

    run()
    assert len(examples) == 2


@pytest.mark.integration
def test_generated_hostile_records_through_dataset_build(stack, tmp_path) -> None:
    """All three topics hostile: the build finishes, every signed anchor review becomes its record, and every
    review record is counted once (used or refused) and each refused one listed."""
    examples: list[int] = []

    @seed(20261207)
    @settings(max_examples=2, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data) -> None:
        tag = uuid.uuid4().hex[:8]
        sources = Sources(f"ds-reviews-{tag}", f"ds-verdicts-{tag}", f"ds-raw-{tag}")
        ensure_topics(stack.bootstrap, [sources.reviews_topic, sources.verdict_topic, sources.input_topic], 1)
        inputs, verdicts, reviews, anchors = [], [], [], []
        for i in range(6):  # anchors: a valid event, its verdict, alice's signed confirm
            event, v = meme(tag, i)
            inputs.append(json.dumps(event).encode())
            verdicts.append(v.model_dump_json().encode())
            reviews.append(signed_value(review(v, "alice", "confirm", 0), KEY, sources.reviews_topic))
            anchors.append(v.event_id)
        for i in range(6, 30):
            event, v = meme(tag, i)
            inputs.append(data.draw(record_values(i, False, None)))
            verdicts.append(data.draw(hostile_value(json.loads(v.model_dump_json()))))
            reviews.append(data.draw(review_value(f"{tag}{i}", sources.reviews_topic))[0])
        reviews += [None, DEEP[0], DEEP[1], b'{"type":"review","duplicate_count":' + b"9" * 5000 + b"}"]
        verdicts += fixed_verdicts(tag)
        inputs += [None, DEEP[0]]
        for topic, values in ((sources.input_topic, inputs), (sources.verdict_topic, verdicts),
                              (sources.reviews_topic, reviews)):
            produce(stack.bootstrap, topic, [(data.draw(keys), v, data.draw(headers), None) for v in values])
        out = tmp_path / tag
        manifest = build_dataset(stack.bootstrap, sources, out, policy(tmp_path), progress=False, review_key=KEY)
        records = {r["event_id"]: r for r in json.loads((out / "dataset.json").read_text())}
        for event_id in anchors:
            assert records[event_id]["moderators"] == {"alice": "block"}
            assert records[event_id]["labels"] == sorted(FLAGGED)
        assert sum(manifest["review_records"].values()) == len(reviews)
        refused = sum(n for k, n in manifest["review_records"].items() if k not in ACCEPTED)
        assert len(manifest["rejected_reviews"]) == refused >= 4
        examples.append(len(reviews))

    run()
    assert len(examples) == 2
