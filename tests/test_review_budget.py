"""The review store's memory budget (issue 27, item 7), over the session's real broker and redis-server: a flood of
large-text input events past a small budget keeps the store within the budget while sharing its Redis with verdict
cache keys (none evicted), and loses nothing (the ingest pauses uncommitted and resumes as TTLs free space); the
page says it is degraded meanwhile; an oversize entry is refused and counted; the store's byte count never falls
below what Redis reports for the keys."""

import json
import random
import time
import uuid

import pytest
import redis
from confluent_kafka import TopicPartition
from fastapi.testclient import TestClient

from consumer.core.cache import cache_key
from consumer.review.app import OVER_BUDGET, create_app
from consumer.review.ingest import ReviewIngest, take_record
from consumer.review.store import MAX_ENTRY_BYTES, OverBudget, ReviewStore, charge
from schemas import MemeEvent
from tests.kafka_helpers import produce_events
from tests.test_review import HTML, settings_for

integration = pytest.mark.integration

BUDGET = 512 * 1024
# The shared Redis's maxmemory, above what it holds before the flood. Redis's own figure grows by more than the
# store's keys (client buffers, table growth: ~0.4 MB more at the end of this test), hence 3x the budget.
HEADROOM = 3 * BUDGET
# What the store may hold past the budget: the card created after a reference was admitted (one entry).
MARGIN = MAX_ENTRY_BYTES


def held_in_redis(r: redis.Redis, prefix: str) -> int:
    """What Redis itself reports for the store's keys (SCAN also drops keys whose TTL has passed)."""
    return sum(r.memory_usage(k, samples=0) or 0 for k in r.scan_iter(match=f"{prefix}*", count=1000))


@pytest.fixture
def shared_redis(stack):
    """The session's redis-server as a shared production Redis: verdict-cache keys in it, and a maxmemory with an
    LRU policy over keys with a TTL (what a cache is given) HEADROOM above what it holds now, so a store that outgrew
    its budget would evict cache keys. Restored afterwards."""
    r = redis.Redis.from_url(stack.redis_url)
    before = r.config_get("maxmemory*")
    cache = [cache_key("1", uuid.uuid4().hex) for _ in range(50)]
    r.mset({k: "v" * 200 for k in cache})
    for k in cache:
        r.expire(k, 3600)
    r.config_set("maxmemory-policy", "volatile-lru")
    r.config_set("maxmemory", r.info("memory")["used_memory"] + HEADROOM)
    try:
        yield r, cache
    finally:
        r.config_set("maxmemory", before["maxmemory"])
        r.config_set("maxmemory-policy", before["maxmemory-policy"])
        r.delete(*cache)


@integration
def test_a_flood_past_the_budget_pauses_the_ingest_keeps_the_cache_and_loses_nothing(stack, topics, shared_redis):
    r, cache = shared_redis
    prefix = f"review-{uuid.uuid4().hex[:6]}:"
    # Keys live 1 s, counted in 1 s buckets, so space frees within the test (24 h and 1 h in production).
    store = ReviewStore(stack.redis_url, prefix=prefix, ref_ttl_s=1, bucket_s=1)
    events = [MemeEvent(event_id=f"flood-{i}", post_id=f"p{i}", image_url=f"https://example.org/{i}.png",
                        text="x" * 10_000) for i in range(200)]  # ~2 MB of references: 4x the budget
    ends = produce_events(stack.bootstrap, topics.input, events)
    total = sum(last + 1 for last in ends.values())
    assert total == len(events)
    s = settings_for(stack, topics, review_dev_no_auth=True)
    ingest = ReviewIngest(stack.bootstrap, s.review_group_id, topics.input, topics.output, store, BUDGET)
    peak, said_degraded = 0, False
    with TestClient(create_app(s, store)) as page:
        assert OVER_BUDGET not in page.get("/", headers=HTML).text
        deadline = time.monotonic() + 30
        while sum(ingest.counts.values()) < total and time.monotonic() < deadline:
            ingest.poll_once(timeout_s=0.2)
            peak = max(peak, held_in_redis(r, prefix))
            if ingest.over_budget and not said_degraded:
                said_degraded = OVER_BUDGET in page.get("/", headers=HTML).text
        committed = ingest.consumer.committed(
            [TopicPartition(topics.input, p) for p in ends], timeout=10)
        assert ingest.pauses >= 1 and said_degraded
        assert OVER_BUDGET not in page.get("/", headers=HTML).text  # resumed, so no longer degraded
    ingest.consumer.close()
    # Nothing lost: every record stored once and committed, none skipped.
    assert dict(ingest.counts) == {"queued": total}
    assert {tp.partition: tp.offset for tp in committed} == {p: last + 1 for p, last in ends.items()}
    assert 0 < peak <= BUDGET + MARGIN, peak
    assert r.exists(*cache) == len(cache)  # no verdict-cache key was evicted


def test_an_oversize_entry_is_refused_and_counted_and_a_full_store_writes_nothing(stack):
    prefix = f"review-{uuid.uuid4().hex[:6]}:"
    store = ReviewStore(stack.redis_url, prefix=prefix)
    huge = MemeEvent(event_id="huge", post_id="p", image_url="https://example.org/" + "a" * MAX_ENTRY_BYTES)
    assert take_record(store, "raw", "raw", huge.model_dump_json().encode(), 0, 0, budget=10**9) == "oversize"
    assert store.usage() == 0 and not store.r.exists(store._event_keys("huge")[0])
    small = {"text": "y" * 1000}
    store.put_ref("a", small, budget=10_000)
    with pytest.raises(OverBudget):
        for i in range(100):
            store.put_ref(f"b{i}", small, budget=10_000)
    assert store.usage() <= 10_000
    assert not store.r.exists(store._event_keys(f"b{i}")[0])  # the refused one was not written


def test_the_byte_count_never_falls_below_what_redis_reports(stack):
    """The budget is kept by counting, so the count must err high: texts of every length in ASCII, two- and four-
    byte characters (JSON-escaped), image URLs, long event ids, against `MEMORY USAGE` on the real redis-server."""
    store = ReviewStore(stack.redis_url, prefix=f"review-{uuid.uuid4().hex[:6]}:")
    rng = random.Random(27)
    for i in range(300):
        ref = {"text": rng.choice("xé😀") * rng.choice([rng.randint(0, 300), rng.randint(0, 10_000)])}
        if rng.random() < 0.5:
            ref["image_url"] = "https://example.org/" + "a" * rng.randint(0, 2000)
        event_id = "e" * rng.randint(1, 190) + str(i)
        store.put_ref(event_id, ref)
        key = store._event_keys(event_id)[0]
        assert charge(key, json.dumps(ref)) >= store.r.memory_usage(key, samples=0), (i, len(ref["text"]))
