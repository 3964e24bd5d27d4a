"""The alerter's state and the review store on a real three-master Redis Cluster (tests/conftest.py
`redis_cluster`): multi-key operations stay in one slot (the cluster would answer CROSSSLOT otherwise), keys
spread over the masters, and a master killed mid-run is counted and survived: nothing is lost or raised
twice, and both components catch up once it is back."""

import asyncio
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import redis
import yaml
from prometheus_client import REGISTRY
from redis.cluster import RedisCluster
from redis.crc import key_slot

from consumer.alert.rules import AlertConfig
from consumer.alert.run import Alerter
from consumer.alert.state import AlertState, Claim
from consumer.core.redis_client import async_client, hash_tag, parse_cluster_url, sync_client
from consumer.errors import ConfigError
from consumer.kafka.topics import ensure_topics
from consumer.review.ingest import ReviewIngest
from consumer.review.store import ReviewStore
from schemas import Verdict
from tests import test_alert
from tests.kafka_helpers import produce_events, produce_raw, read_json_topic
from tests.memes import event
from tests.test_alert import TAG, Hooks, publish, settings, short, verdict

pytestmark = pytest.mark.integration
hooks = test_alert.hooks  # the fixture: a local webhook server


def wait_until(condition, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what() if callable(what) else what} not reached within {timeout_s}s")
        time.sleep(0.05)


def masters_of(cluster, keys: list[str]) -> set[int]:
    return {cluster.node_for_slot(key_slot(k.encode())) for k in keys}


def store_errors() -> float:
    return sum(s.value for m in REGISTRY.collect() for s in m.samples
               if s.name == "memeguard_review_store_errors_total")


def test_cluster_url_forms():
    nodes, options = parse_cluster_url("rediss+cluster://u:p%40ss@10.0.0.1:7000,[::1]:7001/0")
    assert nodes == [("10.0.0.1", 7000), ("::1", 7001)]
    assert options == {"ssl": True, "username": "u", "password": "p@ss"}
    with pytest.raises(ConfigError, match="database 0 only"):
        parse_cluster_url("redis+cluster://127.0.0.1:7000/2")
    with pytest.raises(ConfigError, match="not host:port"):
        parse_cluster_url("redis+cluster://127.0.0.1")
    assert type(sync_client("redis://127.0.0.1:1/0")) is redis.Redis  # no connection made yet
    assert hash_tag("a{b}c") == "{a(b)c}"


def test_multi_key_operations_stay_in_one_slot(redis_cluster):
    client = sync_client(redis_cluster.url)
    assert isinstance(client, RedisCluster)
    # The check has teeth: a transaction over two slots is refused by this cluster.
    with pytest.raises((redis.RedisError, redis.exceptions.RedisClusterException)):
        with client.pipeline(transaction=True) as pipe:
            pipe.set("cross-a", 1).set("cross-b", 2).execute()

    store = ReviewStore(redis_cluster.url, prefix=f"review-{uuid.uuid4().hex[:6]}:")
    ids = [f"ev-{TAG}-{i}" for i in range(9)]
    assert masters_of(redis_cluster, [store._event_keys(e)[0] for e in ids]) == {0, 1, 2}  # spread over all
    verdicts = {e: verdict(e, "review").model_copy(update={"event_id": e}) for e in ids}
    for i, e in enumerate(ids):  # both arrival orders of an event's reference and its verdict
        if i % 2:
            store.put_ref(e, {"text": e})
            store.put_verdict(verdicts[e])
        else:
            store.put_verdict(verdicts[e])
            store.put_ref(e, {"text": e})
    repost = verdicts[ids[0]].model_copy(update={"event_id": f"ev-{TAG}-repost", "post_id": "repost"})
    store.put_ref(repost.event_id, {"text": "again"})
    store.put_verdict(repost)
    store.put_verdict(verdicts[ids[1]])  # re-delivered
    assert sorted(store.pending()) == sorted(ids) and store.pending_count() == len(ids)
    first = store.get(ids[0])
    assert first.duplicate_count == 1 and first.duplicates[0]["event_id"] == repost.event_id
    assert store.card_of(repost.event_id) == ids[0]
    store.decide(ids[0], {"moderator": "alice", "review_id": "r1", "action": "confirm"})
    assert ids[0] not in store.pending() and store.recent() == [ids[0]]
    assert store.last_decision("alice").verdict.event_id == ids[0]
    assert store.claim(ids[0]) and not store.claim(ids[0])
    store.release(ids[0])
    store.undo(ids[0], "alice", "r1")
    assert ids[0] in store.pending() and store.get(ids[0]).decision is None

    async def alert_state() -> None:
        one, two = AlertState(redis_cluster.url, 60), AlertState(redis_cluster.url, 60)
        subjects = [f"{TAG}-post{i}" for i in range(6)]
        assert len(masters_of(redis_cluster, [one._keys("blocked", s)[0] for s in subjects])) >= 2
        for s in subjects:
            assert await one.claim("blocked", s) is Claim.OURS
            assert await one.claim("blocked", s) is Claim.OURS  # again, after a failed attempt: still ours
            assert await two.claim("blocked", s) is Claim.BUSY
            await one.mark_sent("blocked", s)
            assert await two.claim("blocked", s) is Claim.SENT and await two.already_sent("blocked", s)
        await one.release("blocked", subjects[0])  # a no-op once sent
        counts = [await one.count_in_window("repeat", f"{TAG}-w", f"p{i}", 1000.0 + i, 600) for i in range(3)]
        assert counts == [1, 2, 3] and await two.count_in_window("repeat", f"{TAG}-w", "p2", 1002.0, 600) == 3
        await one.close()
        await two.close()

    asyncio.run(alert_state())


class AlerterThread:
    def __init__(self, alerter: Alerter) -> None:
        self.alerter, self.stop, self.error = alerter, threading.Event(), None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self.alerter.run(stop=self.stop))
        except BaseException as e:  # noqa: BLE001 (reported by the test)
            self.error = e

    def metric(self, name: str) -> float:
        return self.alerter.metrics.registry.get_sample_value(name) or 0.0

    def __enter__(self) -> "AlerterThread":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)


def test_alerter_counts_errors_while_a_master_is_dead_and_catches_up(stack, topics, hooks, redis_cluster, tmp_path):
    ensure_topics(stack.bootstrap, [topics.output], 2)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({
        "rules": [{"name": "blocked", "decision": "block"}, {"name": "repeat", "author_posts": 3, "window_s": 600}],
        "destinations": [{"name": "ok", "url": f"{hooks}/ok"}]}))
    s = settings(stack, topics, rules).model_copy(update={"redis_url": redis_cluster.url})
    t0 = datetime.now(UTC)
    publish(stack, topics, [verdict("c1", "block", author="solo")] +
            [verdict(f"w{i}", "review", author="x", at=t0 + timedelta(seconds=i)) for i in range(3)])
    running = AlerterThread(Alerter(s, AlertConfig.from_file(rules)))
    with running:
        wait_until(lambda: len(Hooks.received["/ok"]) == 2, what="the first alerts")
        victim = redis_cluster.node_for_slot(key_slot(f"alert:sent:{hash_tag(f'blocked:{TAG}-c2')}".encode()))
        try:
            redis_cluster.kill(victim)
            redis_cluster.wait_state("fail", 15, [i for i in range(3) if i != victim])
            publish(stack, topics, [verdict("c2", "block", author="two"), verdict("c3", "block", author="three")])
            wait_until(lambda: running.metric("memeguard_alert_redis_errors_total") >= 1, what="a counted error")
            assert running.thread.is_alive() and running.error is None
            assert running.metric("memeguard_alert_redis_up") == 0
            assert len(Hooks.received["/ok"]) == 2  # nothing raised while the state is unreachable
        finally:
            redis_cluster.start(victim)
        wait_until(lambda: len(Hooks.received["/ok"]) == 4, 30, "the alerts held back during the outage")
        wait_until(lambda: running.metric("memeguard_alert_redis_up") == 1, what="redis_up back to 1")
    assert running.error is None
    got = Counter((a["rule"], short(a["post_id"])) for a in read_json_topic(stack.bootstrap, s.alerts_topic))
    assert got == Counter({("blocked", "c1"): 1, ("repeat", "w2"): 1, ("blocked", "c2"): 1, ("blocked", "c3"): 1})
    assert Counter(a["alert_id"] for a in Hooks.received["/ok"]).most_common(1)[0][1] == 1  # none twice


def test_review_ingest_counts_errors_while_a_master_is_dead_and_catches_up(stack, topics, redis_cluster):
    ensure_topics(stack.bootstrap, [topics.input, topics.output], 2)
    store = ReviewStore(redis_cluster.url, prefix=f"review-{uuid.uuid4().hex[:6]}:")
    ingest = ReviewIngest(stack.bootstrap, topics.group, topics.input, topics.output, store).start()
    ids = [f"ev-{TAG}-k{i}" for i in range(4)]
    victim = redis_cluster.node_for_slot(key_slot(f"{store.q}queue".encode()))  # the queue's master
    errors_before = store_errors()
    try:
        wait_until(ingest.assigned.is_set, what="the ingest's assignment")
        try:
            redis_cluster.kill(victim)
            redis_cluster.wait_state("fail", 15, [i for i in range(3) if i != victim])
            produce_events(stack.bootstrap, topics.input, [event(e, text=e) for e in ids])
            produce_raw(stack.bootstrap, topics.output, [
                (e.encode(), verdict(e, "review").model_copy(update={"event_id": e}).model_dump_json().encode())
                for e in ids])
            wait_until(lambda: store_errors() > errors_before, what="a counted store error")
            assert ingest._thread.is_alive()
        finally:
            redis_cluster.start(victim)
        wait_until(lambda: sorted(store.pending()) == sorted(ids), 30, "every card queued after the outage")
    finally:
        ingest.stop()
    assert store.pending_count() == len(ids)
    assert all(isinstance(store.get(e).verdict, Verdict) for e in ids)


def test_async_client_on_cluster_answers_mget_in_one_slot(redis_cluster):
    async def go() -> list:
        client = async_client(redis_cluster.url)
        tag = hash_tag(f"{TAG}-m")
        await client.set(f"a:{tag}", "1")
        await client.set(f"b:{tag}", "2")
        try:
            return await client.mget([f"a:{tag}", f"b:{tag}"])
        finally:
            await client.aclose()

    assert asyncio.run(go()) == [b"1", b"2"]


def test_crash_loop_breaker_on_cluster(redis_cluster):
    from consumer.core.pipeline import RawRecord
    from consumer.worker.crash_guard import CrashLoopBreaker

    async def go() -> tuple[bool, bool, str | None, int]:
        breaker = CrashLoopBreaker(redis_cluster.url, f"g-{TAG}", timeout_s=1.0, retry_after_s=1.0)
        records = [RawRecord(None, b"{}", "raw", p, o) for p in range(4) for o in (10, 11)]  # keys over slots
        first = await breaker.begin_batch(records)
        again = await breaker.begin_batch(records)  # as after a crash: the counts were left behind
        await breaker.record_error(records[:1], ValueError("boom"))
        await breaker.begin_alone(records[0])
        poison = await breaker.begin_alone(records[0])
        await breaker.finish(records)
        await breaker.close()
        return first, again, poison, breaker.counts["errors"]

    first, again, poison, errors = asyncio.run(go())
    assert (first, again, errors) == (False, True, 0)
    assert poison is not None and "ValueError: boom" in poison


def test_verdict_cache_on_cluster_spreads_keys_and_counts_a_dead_master(redis_cluster):
    """The worker's cache on the cluster: one batch's keys live on every master and come back in one call
    (MGET split per slot); with a master dead the batch degrades to misses, counted, and serves again after."""
    from consumer.core.cache import VerdictCache, cache_key

    keys = [cache_key("m@1", f"{TAG}-{i:03d}") for i in range(48)]
    assert len(masters_of(redis_cluster, keys)) == 3

    async def go() -> tuple[int, int, int, int]:
        cache = VerdictCache(redis_cluster.url, ttl_s=60, timeout_s=0.5, retry_after_s=0.2)
        await cache.put_many({k: verdict(f"e{i}") for i, k in enumerate(keys)})
        found = sum(v is not None for v in await cache.get_many(keys))
        redis_cluster.kill(0)
        try:
            during = sum(v is not None for v in await cache.get_many(keys))
            errors = cache.counts["errors"]
        finally:
            redis_cluster.start(0)
        await asyncio.sleep(0.3)  # past the cool-down
        alive = [k for k in keys if redis_cluster.node_for_slot(key_slot(k.encode())) != 0]  # node 0's keys died
        after = sum(v is not None for v in await cache.get_many(alive))
        await cache.close()
        return found, during, errors, after - len(alive)

    found, during, errors, missing_after = asyncio.run(go())
    assert (found, during, missing_after) == (48, 0, 0)
    assert errors >= 1
