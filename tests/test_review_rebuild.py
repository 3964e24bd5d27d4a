"""The review queue survives Redis (issue 29 item 4): a Redis that lost its data is refilled from the topics (the
undecided cards come back, the decided ones come back decided, not queued), and while Redis is down the page
says so in one sentence with 503. Real broker, real redis-server (tests/conftest.py), the page via TestClient."""

import base64
import json
import threading
import time
import uuid
from contextlib import ExitStack

import pytest
from fastapi.testclient import TestClient

from consumer.review.app import create_app
from consumer.review.ingest import ReviewIngest
from consumer.review.store import ReviewStore
from tests.kafka_helpers import produce_raw
from tests.memes import event, meme_bytes
from tests.test_review import HTML, USERS, csrf, queue, settings_for, sign_in, verdict_for

SIGNING_KEY = "rebuild-test-signing-key-0123456789"
DEGRADED = "degraded: Redis is unreachable, decisions are paused"


@pytest.fixture
def open_app():
    """TestClient entered as a context, so the app's lifespan runs and closes its Kafka producer."""
    with ExitStack() as apps:
        yield lambda settings, store, **client: apps.enter_context(TestClient(create_app(settings, store), **client))


def wait_until(condition, timeout_s: float = 60.0) -> bool:
    """Polls `condition` (a state, not a time) until it holds or the deadline passes."""
    deadline, tick = time.monotonic() + timeout_s, threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            return False
        tick.wait(0.1)
    return True


@pytest.mark.integration
def test_a_flushed_redis_is_rebuilt_from_the_topics_without_the_decided_cards(stack, topics, open_app) -> None:
    s = settings_for(stack, topics, review_users=USERS,
                     review_signing_key=SIGNING_KEY)
    store = ReviewStore(stack.redis_url, prefix=f"review-{uuid.uuid4().hex[:6]}:")
    img = meme_bytes(3)
    b64 = base64.b64encode(img).decode()
    a, b, c, d = (event(f"ev-rb-{n}-{topics.group}", text=f"rebuild {n}", image_b64=b64) for n in "abcd")
    repost = event(f"ev-rb-a2-{topics.group}", text="rebuild a", image_b64=b64)  # a's content, later
    queue(stack, topics, s, store, [(e, verdict_for(e, "review", img)) for e in (a, b, c, d)])
    alice = open_app(s, store)
    token = sign_in(alice, "alice")
    alice.post(f"/decision?event_id={a.event_id}", data={"action": "confirm", "csrf_token": token})
    alice.post(f"/decision?event_id={b.event_id}", data={"action": "overturn", "csrf_token": token})
    undone = store.get(b.event_id).decision["review_id"]
    assert alice.post("/undo", data={"review_id": undone, "csrf_token": token}).status_code == 200  # b: back
    # Anyone who can write the reviews topic must not be able to empty the queue: an unsigned "decision" on c.
    forged = {**store.get(a.event_id).decision, "review_id": uuid.uuid4().hex, "event_id": c.event_id,
              "post_id": c.post_id, "content_hash": verdict_for(c, "review", img).content_hash}
    produce_raw(stack.bootstrap, s.reviews_topic, [(c.post_id.encode(), json.dumps(forged).encode())])
    queue(stack, topics, s, store, [(repost, verdict_for(repost, "review", img))])
    waiting = sorted(e.event_id for e in (b, c, d))
    assert sorted(store.pending()) == waiting and store.card_of(repost.event_id) == a.event_id

    store.r.flushdb()  # Redis restarted without persistence
    assert store.pending() == [] and not store.built()
    ReviewIngest.for_page(s, store, rebuild_now=True).consumer.close()  # `memeguard review --rebuild`
    assert sorted(store.pending()) == waiting and store.built()
    decided = store.get(a.event_id)
    assert decided is not None and decided.decision["action"] == "confirm" and decided.decision["moderator"] == "alice"
    assert store.card_of(repost.event_id) == a.event_id and decided.duplicate_count == 1  # a repost, not a card
    assert store.get(b.event_id).decision is None  # undone on the topic: undecided again
    assert alice.get("/", headers=HTML).status_code == 401  # sessions lived in the lost Redis: sign in again
    sign_in(alice, "alice")
    page = alice.get("/", headers=HTML)
    assert page.status_code == 200 and b.event_id in page.text

    # The page's own ingest does the same by itself when the store lost the queue while it runs.
    store.r.flushdb()
    ingest = ReviewIngest.for_page(s, store).start()
    try:
        assert wait_until(lambda: sorted(store.pending()) == waiting and store.built())
    finally:
        ingest.stop()
    assert store.get(a.event_id).decision["action"] == "confirm"


@pytest.mark.integration
def test_while_redis_is_down_the_page_says_degraded_with_503(stack, topics, open_app) -> None:
    s = settings_for(stack, topics, review_dev_no_auth=True)
    store = ReviewStore(stack.redis_url, prefix=f"review-{uuid.uuid4().hex[:6]}:")
    client = open_app(s, store, raise_server_exceptions=False)
    up = client.get("/", headers=HTML)
    assert up.status_code == 200
    token = csrf(up.text)
    stack.redis.stop()
    try:
        page = client.get("/", headers=HTML)
        assert page.status_code == 503 and page.headers["retry-after"] == "5"
        assert f'id="degraded-message" class="error" role="alert">{DEGRADED}.</p>' in page.text
        assert "Traceback" not in page.text and "Internal Server Error" not in page.text
        api = client.get("/item?event_id=x")
        assert (api.status_code, api.json()) == (503, {"detail": DEGRADED})
        assert client.post("/decision?event_id=x", data={"action": "confirm", "csrf_token": token}).status_code == 503
    finally:
        stack.redis.start()
    assert client.get("/", headers=HTML).status_code == 200  # back as soon as Redis answers
