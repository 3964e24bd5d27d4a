"""The review page with FastAPI's TestClient over a real broker and a real redis-server."""

import base64
import uuid
from contextlib import ExitStack

import pytest
from fastapi.testclient import TestClient

from consumer.hashing import content_hash
from consumer.review.app import create_app
from consumer.review.ingest import ReviewIngest
from consumer.review.store import ReviewStore
from consumer.settings import ReviewSettings
from schemas import TECHNIQUES, Decision, ModelInfo, TechniqueScore, Verdict
from tests.kafka_helpers import produce_events, produce_raw, read_json_topic
from tests.memes import SEMEVAL, event, meme_bytes

pytestmark = pytest.mark.integration

HOSTILE = "<script>alert('pwned')</script><img src=x onerror=alert(1)> & \"quotes\""


def verdict_for(e, decision: str, image: bytes) -> Verdict:
    techniques = [TechniqueScore(technique=t, score=0.91 if t == "Smears" else 0.1, threshold=0.5,
                                 flagged=t == "Smears") for t in TECHNIQUES]
    return Verdict(event_id=e.event_id, post_id=e.post_id, author_id="auth", content_hash=content_hash(image, e.text),
                   model=ModelInfo(name="m", version="1"), techniques=techniques, decision=Decision(decision),
                   reasons=["Smears above its review threshold"], harmful_score=0.73, explanation="It <b>smears</b>.")




@pytest.fixture
def review(stack, topics):
    s = ReviewSettings(kafka_bootstrap=stack.bootstrap, redis_url=stack.redis_url, input_topic=topics.input,
                       output_topic=topics.output, reviews_topic=f"reviews-{topics.group}",
                       review_group_id=f"review-{topics.group}", file_root=SEMEVAL.parent)
    store = ReviewStore(stack.redis_url, prefix=f"review-{uuid.uuid4().hex[:6]}:")
    return s, store


@pytest.fixture
def open_app():
    """TestClient entered as a context, so the app's lifespan runs and closes its Kafka producer."""
    with ExitStack() as apps:
        yield lambda settings, store: apps.enter_context(TestClient(create_app(settings, store)))


def test_queue_shows_the_meme_escapes_hostile_text_and_publishes_decisions(stack, topics, review, open_app):
    s, store = review
    img = meme_bytes(4)
    hostile = event("ev-hostile", text=HOSTILE, image_b64=base64.b64encode(img).decode())
    plain = event("ev-plain", text="an ordinary meme", image_b64=base64.b64encode(img).decode())
    allowed = event("ev-allowed", text="nothing to see", image_b64=base64.b64encode(img).decode())
    tampered = event("ev-tampered", text="text differs from what was judged", image_b64=base64.b64encode(img).decode())
    produce_events(stack.bootstrap, topics.input, [hostile, plain, allowed, tampered])
    wrong = verdict_for(tampered, "review", img).model_copy(update={"content_hash": "0" * 64})
    produce_raw(stack.bootstrap, topics.output, [
        (e.post_id.encode(), v.model_dump_json().encode()) for e, v in [
            (hostile, verdict_for(hostile, "review", img)), (plain, verdict_for(plain, "review", img)),
            (allowed, verdict_for(allowed, "allow", img)), (tampered, wrong)]])
    ReviewIngest(s.kafka_bootstrap, s.review_group_id, s.input_topic, s.output_topic, store).drain()
    assert sorted(store.pending()) == ["ev-hostile", "ev-plain", "ev-tampered"]  # `allow` is not queued

    client = open_app(s, store)
    page = client.get("/item/ev-hostile")
    assert page.status_code == 200
    html = page.text
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert "It &lt;b&gt;smears&lt;/b&gt;." in html  # the explanation is escaped too
    assert "0.730" in html and "Smears — 0.910" in html
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/review.js" defer></script>' in html
    js = client.get("/static/review.js")
    assert js.status_code == 200 and '"c"' in js.text and '"o"' in js.text and '"n"' in js.text
    image = client.get("/image/ev-hostile")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get("/image/ev-tampered").status_code == 404  # bytes no longer hash to the verdict's content
    assert client.get("/static/../app.py").status_code == 404

    r = client.post("/item/ev-hostile/decision", data={"action": "confirm", "moderator": "mod-1"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/item/")
    client.post("/item/ev-hostile/decision", data={"action": "overturn"})  # a double submit changes nothing
    client.post("/item/ev-plain/decision", data={"action": "overturn"})
    reviews = read_json_topic(stack.bootstrap, s.reviews_topic)
    by_id = {m["event_id"]: m for m in reviews}
    assert len(reviews) == 2
    assert by_id["ev-hostile"]["action"] == "confirm" and by_id["ev-hostile"]["final_decision"] == "block"
    assert by_id["ev-hostile"]["labels"] == ["Smears"] and by_id["ev-hostile"]["moderator"] == "mod-1"
    assert by_id["ev-plain"]["final_decision"] == "allow" and by_id["ev-plain"]["rejected_labels"] == ["Smears"]

    # A refresh, even of a new app process on the same Redis, keeps the decisions.
    again = open_app(s, ReviewStore(stack.redis_url, prefix=store.p))
    assert store.pending() == ["ev-tampered"]
    shown = again.get("/item/ev-hostile").text
    assert 'id="decision"' in shown and "confirm" in shown and 'id="confirm"' not in shown
    # A re-delivered verdict does not put a decided meme back in the queue.
    store.put_verdict(verdict_for(hostile, "review", img))
    assert store.pending() == ["ev-tampered"]
    assert "ev-tampered" in again.get("/").text


def test_verdict_before_its_event_waits_for_the_reference(stack, topics, review, open_app):
    s, store = review
    e = event("ev-late", text="late event", image_url=(SEMEVAL / "images" / "nope.png").as_uri())
    store.put_verdict(verdict_for(e, "review", b""))
    assert store.pending() == []
    store.put_ref(e.event_id, {"text": e.text, "image_url": e.image_url})
    assert store.pending() == ["ev-late"]
    client = open_app(s, store)
    assert client.get("/image/ev-late").status_code == 404  # missing file: a clear 404, not a crash
    assert client.get("/item/unknown").status_code == 404
