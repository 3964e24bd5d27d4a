"""Two replicas of the alerter and two of the review ingest, on the real broker and real Redis: the work is
split by the consumer group, the shared store keeps every alert and every queue entry single — also when
both replicas read the same records (as during a rebalance, simulated here by two groups)."""

import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from confluent_kafka import Producer

from consumer.alert.rules import AlertConfig
from consumer.alert.run import Alerter
from consumer.kafka.topics import ensure_topics
from consumer.review.ingest import ReviewIngest
from consumer.review.store import ReviewStore
from consumer.settings import AlertSettings
from tests import test_alert
from tests.kafka_helpers import read_json_topic
from tests.memes import event
from tests.test_alert import TAG, Hooks, settings, short, verdict
from tests.test_redis_cluster import AlerterThread, wait_until

pytestmark = pytest.mark.integration
hooks = test_alert.hooks  # the fixture: a local webhook server
SETTLE_S = 1.0  # after the expected outputs arrived: time for a duplicate to show up, if there were one


def produce_to(bootstrap: str, topic: str, records: list[tuple[int, bytes]]) -> None:
    """(partition, value): placed by hand, so an event and its verdict can land on different replicas."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    failures = []
    for partition, value in records:
        producer.produce(topic, value=value, partition=partition,
                         on_delivery=lambda err, _m: err and failures.append(str(err)))
    producer.flush(30)
    assert not failures, failures


def alert_rules(path, hooks_url: str):
    path.write_text(yaml.safe_dump({
        "rules": [{"name": "blocked", "decision": "block"}, {"name": "repeat", "author_posts": 3, "window_s": 600}],
        "destinations": [{"name": "ok", "url": f"{hooks_url}/ok"}]}))
    return path


def verdict_batch(wave: str) -> tuple[list[tuple[int, bytes]], set[tuple[str, str]]]:
    """Six blocked posts and one author's three flagged posts, over both partitions; the alerts they raise."""
    t0 = datetime.now(UTC)
    vs = [verdict(f"{wave}-b{i}", "block", author=f"{wave}-solo{i}") for i in range(6)]
    vs += [verdict(f"{wave}-r{i}", "review", author=f"{wave}-x", at=t0 + timedelta(seconds=i)) for i in range(3)]
    expected = {("blocked", f"{wave}-b{i}") for i in range(6)} | {("repeat", f"author:{wave}-x")}
    return [(i % 2, v.model_dump_json().encode()) for i, v in enumerate(vs)], expected


def subject(alert: dict) -> tuple[str, str]:
    """(rule, post) or, for the author rule (raised by whichever of the posts was read last), (rule, author)."""
    if alert["rule"] == "repeat":
        return alert["rule"], f"author:{short(alert['author_id'])}"
    return alert["rule"], short(alert["post_id"])


def alerts_seen(stack, s) -> Counter:
    return Counter(subject(a) for a in read_json_topic(stack.bootstrap, s.alerts_topic))


def two_partition_alerter(stack, topics, hooks, tmp_path) -> tuple[AlertSettings, AlertConfig]:
    ensure_topics(stack.bootstrap, [topics.output], 2)
    s = settings(stack, topics, alert_rules(tmp_path / "rules.yaml", hooks))
    return s, AlertConfig.from_file(s.alert_rules_file)


def test_two_alerter_replicas_split_the_partitions_and_alert_once(stack, topics, hooks, tmp_path):
    s, config = two_partition_alerter(stack, topics, hooks, tmp_path)
    first, expected = verdict_batch("one")
    produce_to(stack.bootstrap, topics.output, first)
    with AlerterThread(Alerter(s, config)) as a, AlerterThread(Alerter(s, config)) as b:
        wait_until(lambda: len(a.alerter.partitions) == 1 == len(b.alerter.partitions),
                   30, "one partition per replica")
        second, more = verdict_batch("two")  # the author's posts alternate partitions: both replicas count them
        produce_to(stack.bootstrap, topics.output, second)
        expected |= more
        wait_until(lambda: len(Hooks.received["/ok"]) >= len(expected), 30,
                   lambda: f"every alert of {sorted(expected)} (got {[subject(h) for h in Hooks.received['/ok']]})")
        time.sleep(SETTLE_S)
    assert a.error is None and b.error is None
    assert a.metric("memeguard_alert_verdicts_total") > 0 and b.metric("memeguard_alert_verdicts_total") > 0
    assert alerts_seen(stack, s) == Counter({k: 1 for k in expected})
    assert sorted(subject(h) for h in Hooks.received["/ok"]) == sorted(expected)


def test_two_alerters_reading_the_same_verdicts_raise_each_alert_once(stack, topics, hooks, tmp_path):
    """The worst case of a rebalance: both replicas hold every record (two groups here)."""
    s, config = two_partition_alerter(stack, topics, hooks, tmp_path)
    records, expected = verdict_batch("both")
    produce_to(stack.bootstrap, topics.output, records)
    other = s.model_copy(update={"alert_group_id": f"other-{topics.group}"})
    with AlerterThread(Alerter(s, config)) as a, AlerterThread(Alerter(other, config)) as b:
        wait_until(lambda: a.metric("memeguard_alert_verdicts_total") == 9 == b.metric("memeguard_alert_verdicts_total"),
                   30, "both read every verdict")
        wait_until(lambda: len(Hooks.received["/ok"]) >= len(expected), 30, "every alert")
        time.sleep(SETTLE_S)
    assert a.error is None and b.error is None
    assert alerts_seen(stack, s) == Counter({k: 1 for k in expected})
    suppressed = sum(x.alerter.metrics.registry.get_sample_value("memeguard_alerts_suppressed_total", {"rule": r}) or 0
                     for x in (a, b) for r in ("blocked", "repeat"))
    assert suppressed >= len(expected)  # each alert: sent by one, suppressed by the other


def review_records(tag: str) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]], list[str], str]:
    """Events on one partition, their verdicts on the other (so another replica reads each); two reposts of
    the first meme; one verdict published twice. Returns (events, verdicts, card ids, first event id)."""
    ids = [f"ev-{TAG}-{tag}{i}" for i in range(6)]
    cards = {e: verdict(e, "review").model_copy(update={"event_id": e}) for e in ids}
    reposts = [cards[ids[0]].model_copy(update={"event_id": f"{ids[0]}-re{j}", "post_id": f"re{j}"}) for j in (1, 2)]
    events = [(i % 2, event(v.event_id, text=v.event_id).model_dump_json().encode())
              for i, v in enumerate([*cards.values(), *reposts])]
    verdicts = [((i + 1) % 2, v.model_dump_json().encode()) for i, v in enumerate([*cards.values(), *reposts])]
    verdicts.append((0, cards[ids[1]].model_dump_json().encode()))  # re-delivered
    return events, verdicts, ids, ids[0]


@pytest.mark.parametrize("groups", ["one group", "two groups"])
def test_two_review_ingest_replicas_queue_each_card_once(stack, topics, redis_cluster, groups):
    ensure_topics(stack.bootstrap, [topics.input, topics.output], 2)
    prefix = f"review-{uuid.uuid4().hex[:6]}:"
    stores = [ReviewStore(redis_cluster.url, prefix=prefix) for _ in range(2)]  # one client each, shared keys
    group_ids = [topics.group, topics.group if groups == "one group" else f"other-{topics.group}"]
    ingests = [ReviewIngest(stack.bootstrap, g, topics.input, topics.output, st).start()
               for g, st in zip(group_ids, stores, strict=True)]
    try:
        each = 2 if groups == "one group" else 4  # of the 4 partitions (2 topics × 2)
        wait_until(lambda: all(len(i.partitions) == each for i in ingests), 30, "the assignments")
        events, verdicts, cards, first = review_records(groups[:3])
        produce_to(stack.bootstrap, topics.input, events)
        produce_to(stack.bootstrap, topics.output, verdicts)
        store = stores[0]
        same_content = {first, f"{first}-re1", f"{first}-re2"}  # whichever verdict is read first is the card

        def card() -> str | None:
            return next((e for e in store.pending() if e in same_content), None)

        wait_until(lambda: store.pending_count() >= len(cards) and card() and store.get(card()).duplicate_count >= 2,
                   30, "every card and repost")
        time.sleep(SETTLE_S)
    finally:
        for i in ingests:
            i.stop()
    assert sorted(store.pending()) == sorted({*cards} - {first} | {card()}) and store.pending_count() == len(cards)
    item = store.get(card())
    assert item.duplicate_count == 2 and {d["event_id"] for d in item.duplicates} | {card()} == same_content
