"""Reviews are authentic (issue 27, item 5): `dataset build` uses only reviews the review page signed with
MEMEGUARD_REVIEW_SIGNING_KEY; the moderator, time and labels come from the signed content, the order from the
broker's timestamp; a retraction cancels only the same moderator's review; labels are only techniques the
reviewed verdict flagged. Everything else is counted and listed in the manifest, never used. On the real broker."""

import base64
import ipaddress
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Producer
from fastapi.testclient import TestClient

from consumer.core.fetch import FetchPolicy
from consumer.core.hashing import content_hash
from consumer.kafka.topics import ensure_topics
from consumer.learning.dataset import Sources, build_dataset
from consumer.learning.reviews import ReviewAuth
from consumer.review.app import create_app, retraction_message, review_message
from consumer.review.auth import Moderator
from consumer.review.store import Item, ReviewStore
from schemas import TECHNIQUES, Decision, ModelInfo, TechniqueScore, Verdict
from schemas.review import encode_review
from tests.generative import tiny_png
from tests.kafka_helpers import produce_raw, read_json_topic

KEY = b"review-signing-key-0123456789abcdef"
OTHER_KEY = b"not-the-review-key-0123456789abcd"
T0 = datetime(2026, 12, 7, 10, tzinfo=UTC)
FLAGGED = ("Smears", "Name calling/Labeling")

pytestmark = pytest.mark.integration


def policy(root: Path) -> FetchPolicy:
    return FetchPolicy(allowed_schemes=frozenset({"base64"}), file_root=root.resolve(), max_bytes=2_000_000,
                       timeout_s=1.0, max_redirects=0, allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))


def meme(tag: str, n: int) -> tuple[dict, Verdict]:
    """An input event (inline image) and its `review` verdict flagging FLAGGED."""
    png, text = tiny_png((n * 37 % 256, 30 + n % 200, 30)), f"meme {tag} {n}"
    event = {"event_id": f"ev-{tag}-{n}", "post_id": f"post-{tag}-{n}", "author_id": "author",
             "image_b64": base64.b64encode(png).decode(), "text": text, "created_at": T0.isoformat()}
    techniques = [TechniqueScore(technique=t, score=0.9 if t in FLAGGED else 0.1, threshold=0.5, flagged=t in FLAGGED)
                  for t in TECHNIQUES]
    verdict = Verdict(event_id=event["event_id"], post_id=event["post_id"], author_id="author",
                      content_hash=content_hash(png, text), model=ModelInfo(name="m", version="1"),
                      techniques=techniques, decision=Decision.REVIEW, created_at=T0)
    return event, verdict


def review(v: Verdict, who: str, action: str, minute: int, **changes) -> dict:
    """The review page's own message (consumer/review/app.py), at T0 + minute."""
    msg = review_message(Item(v, {}), action, Moderator(who, "password"))
    return {**msg, "reviewed_at": (T0 + timedelta(minutes=minute)).isoformat(), **changes}


def retraction(v: Verdict, who: str, of: dict, minute: int) -> dict:
    msg = retraction_message(Item(v, {}, decision=of), Moderator(who, "password"))
    return {**msg, "reviewed_at": (T0 + timedelta(minutes=minute)).isoformat()}


def at(minute: float) -> int:
    return int((T0 + timedelta(minutes=minute)).timestamp() * 1000)


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None, list, int | None]]) -> None:
    """(key, value, headers, broker timestamp ms or None) each, in order, on one partition."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "message.max.bytes": 16 * 1024 * 1024})
    errors: list[str] = []
    for key, value, hdrs, ts in records:
        producer.produce(topic, key=key, value=value, headers=hdrs, partition=0, timestamp=ts or 0,
                         on_delivery=lambda err, _msg: err and errors.append(str(err)))
    assert producer.flush(30) == 0 and not errors, errors


def signed(topic: str, doc: dict, minute: float, key: bytes | None = KEY) -> tuple:
    return None, encode_review(topic, doc, key), [], at(minute)


def setup(stack, tag: str, n: int) -> tuple[Sources, list[Verdict]]:
    sources = Sources(f"reviews-{tag}", f"verdicts-{tag}", f"raw-{tag}")
    ensure_topics(stack.bootstrap, [sources.reviews_topic, sources.verdict_topic, sources.input_topic], 1)
    memes = [meme(tag, i) for i in range(n)]
    produce_raw(stack.bootstrap, sources.input_topic, [(None, json.dumps(e).encode()) for e, _ in memes])
    produce_raw(stack.bootstrap, sources.verdict_topic, [(None, v.model_dump_json().encode()) for _, v in memes])
    return sources, [v for _, v in memes]


def test_forged_reviews_are_counted_listed_and_never_used(stack, tmp_path) -> None:
    tag = uuid.uuid4().hex[:8]
    sources, (a, b, c, d, e) = setup(stack, tag, 5)
    topic = sources.reviews_topic
    alice_on_b = review(b, "alice", "confirm", 1)
    forged_moderator = {**review(a, "alice", "confirm", 2)}
    forged_moderator_signature = json.loads(encode_review(topic, forged_moderator, KEY))
    forged_moderator_signature["moderator"] = "mallory"  # the signature was alice's
    records = [
        signed(topic, review(a, "alice", "overturn", 1), 1),
        # 1. forged moderator: alice's signed review with the moderator changed; mallory unsigned; another key
        (None, json.dumps(forged_moderator_signature).encode(), [], at(2)),
        signed(topic, review(a, "mallory", "confirm", 3), 3, key=None),
        signed(topic, review(a, "eve", "confirm", 3), 3, key=OTHER_KEY),
        # 2. bob (a real moderator: the page signed it) retracts alice's review of b: not his to retract
        signed(topic, alice_on_b, 1),
        signed(topic, retraction(b, "bob", alice_on_b, 4), 4),
        # 3. labels: a name that is no technique (the schema refuses it even signed), a technique the verdict
        # did not flag (signed, refused against the verdict)
        signed(topic, review(c, "alice", "confirm", 5, labels=["Smears", "Buy my product"]), 5),
        signed(topic, review(c, "bob", "confirm", 5, labels=["Smears", "Doubt"]), 5),
        signed(topic, review(c, "carol", "overturn", 6), 6),
        # 4. unsigned review
        (None, json.dumps(review(d, "alice", "confirm", 7)).encode(), [], at(7)),
        # 5. order by the broker's timestamp: carol's two reviews of e, the later one by the broker wins
        signed(topic, review(e, "carol", "confirm", 10), 11),
        signed(topic, review(e, "carol", "overturn", 8), 12),
    ]
    # 6. replayed copies of carol's confirm cannot make it her latest vote again: a later copy is a replay,
    # one dated by the broker before the review was signed is refused
    replayed = records[-2][1]
    records += [(None, replayed, [], at(13)), (None, replayed, [], at(4))]
    produce(stack.bootstrap, topic, records)

    manifest = build_dataset(stack.bootstrap, sources, tmp_path / "ds", policy(tmp_path), progress=False,
                             review_key=KEY)
    data = {r["event_id"]: r for r in json.loads((tmp_path / "ds" / "dataset.json").read_text())}
    assert {k: (r["decision"], r["moderators"]) for k, r in data.items()} == {
        a.event_id: ("allow", {"alice": "allow"}),            # mallory's and eve's confirms do not count
        b.event_id: ("block", {"alice": "block"}),            # bob's retraction cancelled nothing
        c.event_id: ("allow", {"carol": "allow"}),            # alice's and bob's labelled confirms refused
        e.event_id: ("allow", {"carol": "allow"}),            # latest by broker timestamp
    }
    assert d.event_id not in data  # only an unsigned review
    assert data[b.event_id]["labels"] == sorted(FLAGGED)
    assert all(set(r["labels"]) <= set(FLAGGED) for r in data.values())
    # the signed time of the vote that counts (earlier than the confirm it replaced: order is the broker's)
    assert data[e.event_id]["reviewed_at"] == (T0 + timedelta(minutes=8)).isoformat()
    reasons = {(r["offset"], r["reason"]) for r in manifest["rejected_reviews"]}
    assert reasons == {(1, "bad_signature"), (2, "unsigned"), (3, "bad_signature"), (5, "foreign_retraction"),
                       (6, "invalid"), (7, "labels_not_in_verdict"), (9, "unsigned"),
                       (12, "replayed"), (13, "timestamp_before_review")}
    assert manifest["review_records"] == {
        "bad_signature": 2, "unsigned": 2, "foreign_retraction": 1, "invalid": 1, "labels_not_in_verdict": 1,
        "replayed": 1, "timestamp_before_review": 1, "verified": 5}
    assert "mallory" not in manifest["moderators"] and "eve" not in manifest["moderators"]
    bob = next(r for r in manifest["rejected_reviews"] if r["reason"] == "foreign_retraction")
    assert bob["moderator"] == "bob"  # signed content is listed; unsigned content never is
    assert all("moderator" not in r for r in manifest["rejected_reviews"] if r["reason"] in ("unsigned", "invalid"))


def test_a_retraction_cancels_the_same_moderators_review_and_a_copy_is_a_replay(stack, tmp_path) -> None:
    tag = uuid.uuid4().hex[:8]
    sources, (a, b) = setup(stack, tag, 2)
    topic = sources.reviews_topic
    alice_on_a = review(a, "alice", "confirm", 1)
    bob_on_b = review(b, "bob", "confirm", 1)
    produce(stack.bootstrap, topic, [
        signed(topic, alice_on_a, 1), signed(topic, review(a, "bob", "overturn", 2), 2),
        signed(topic, review(a, "carol", "overturn", 2), 2),
        signed(topic, retraction(a, "alice", alice_on_a, 3), 3),  # alice's own undo: stands
        signed(topic, bob_on_b, 1),
        signed(topic, bob_on_b, 5),  # the same signed review again, later: a replay, counted once
    ])
    manifest = build_dataset(stack.bootstrap, sources, tmp_path / "ds", policy(tmp_path), progress=False,
                             review_key=KEY)
    data = {r["event_id"]: r for r in json.loads((tmp_path / "ds" / "dataset.json").read_text())}
    assert data[a.event_id]["moderators"] == {"bob": "allow", "carol": "allow"}
    assert data[b.event_id]["moderators"] == {"bob": "block"}
    assert manifest["retracted_reviews"] == 1
    assert manifest["review_records"] == {"verified": 5, "replayed": 1}
    assert [r["offset"] for r in manifest["rejected_reviews"]] == [5]


def test_without_the_key_nothing_unsigned_is_used_off_loopback() -> None:
    assert ReviewAuth.of("kafka.example:9092", key=None) == ReviewAuth(None, False)
    assert ReviewAuth(None, False).read("t", json.dumps({"type": "review"}).encode()) == (None, "unsigned")


def test_the_review_page_signs_what_it_publishes(stack, topics) -> None:
    """A decision through the page is a record that verifies with the key, and a retraction too."""
    from tests.test_review import PASSWORDS, USERS, settings_for, sign_in

    s = settings_for(stack, topics, review_users=USERS, review_signing_key=KEY.decode())
    e, v = meme(topics.group, 1)
    store = ReviewStore(stack.redis_url, prefix=f"review-{uuid.uuid4().hex[:6]}:")
    store.put_ref(v.event_id, {"text": e["text"]})
    store.put_verdict(v)
    with TestClient(create_app(s, store)) as client:
        token = sign_in(client, "alice", PASSWORDS["alice"])
        response = client.post(f"/decision?event_id={v.event_id}", data={"action": "confirm", "csrf_token": token},
                               follow_redirects=False)
        assert response.status_code in (200, 303), response.text
    values = read_json_topic(stack.bootstrap, s.reviews_topic)
    assert len(values) == 1
    raw = json.dumps(values[0]).encode()
    message, result = ReviewAuth(KEY, False).read(s.reviews_topic, raw)
    assert result == "verified" and message.moderator == "alice" and set(message.labels) == set(FLAGGED)
    assert ReviewAuth(OTHER_KEY, False).read(s.reviews_topic, raw)[1] == "bad_signature"
    assert ReviewAuth(KEY, False).read("another-topic", raw)[1] == "bad_signature"  # bound to its topic


def test_resolution_of_signed_reviews_latest_per_moderator_majority_and_ties() -> None:
    """The resolution policy over verified reviews (in process; replaces the unsigned-record version of this
    check in tests/test_learning_calibrate.py, whose records no longer verify)."""
    from consumer.kafka.topic_reader import Record
    from consumer.learning.reviews import resolve, verify

    a, b, c = (meme("res", i)[1] for i in range(3))
    bob_on_a = review(a, "bob", "overturn", 3)
    docs = [review(a, "alice", "overturn", 1), review(a, "alice", "confirm", 2),  # alice changed her mind
            bob_on_a, retraction(a, "bob", bob_on_a, 4), review(a, "carol", "confirm", 5),
            review(b, "alice", "confirm", 6), review(b, "bob", "overturn", 7),  # a tie: a disagreement
            review(c, "alice", "overturn", 8), review(c, "bob", "confirm", 9), review(c, "carol", "confirm", 10)]
    records = [Record("reviews", 0, i, None, encode_review("reviews", d, KEY), at(i + 1)) for i, d in enumerate(docs)]
    records.append(Record("reviews", 0, len(docs), None, b"not json", at(20)))
    res = resolve(verify(records, "reviews", ReviewAuth(KEY, False)))
    by = {r.content_hash: r for r in res.resolved}
    assert by[a.content_hash].decision == "block" and by[a.content_hash].unanimous
    assert len(by[a.content_hash].votes) == 2  # bob's vote was undone
    assert by[b.content_hash].decision is None and not by[b.content_hash].unanimous
    assert by[c.content_hash].decision == "block" and not by[c.content_hash].unanimous
    assert by[c.content_hash].latest.moderator == "carol"
    assert {r.content_hash for r in res.labelled} == {a.content_hash, c.content_hash}
    assert {r.content_hash for r in res.disagreements} == {b.content_hash, c.content_hash}
    assert (res.retracted, res.invalid) == (1, 1)
