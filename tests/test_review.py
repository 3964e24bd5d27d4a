"""The review page with FastAPI's TestClient over a real broker and a real redis-server: what it shows, who may
decide (authentication, CSRF), what it publishes (identity, one card per content, undo as a retraction)."""

import base64
import json
import os
import re
import subprocess
import sys
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from consumer.core.hashing import content_hash
from consumer.review.app import create_app
from consumer.review.auth import CSRF_COOKIE, SESSION_COOKIE, hash_password, verify_password
from consumer.review.ingest import ReviewIngest
from consumer.review.settings import ReviewSettings
from consumer.review.store import ReviewStore
from schemas import TECHNIQUES, Decision, ModelInfo, TechniqueScore, Verdict
from tests.kafka_helpers import produce_events, produce_raw, read_json_topic
from tests.memes import SEMEVAL, event, meme_bytes

REPO = Path(__file__).resolve().parents[1]
integration = pytest.mark.integration

HOSTILE = "<script>alert('pwned')</script><img src=x onerror=alert(1)> & \"quotes\""
PASSWORDS = {"alice": "alice-correct-horse", "bob": "bob-battery-staple"}
USERS = {u: hash_password(p, n=2**14) for u, p in PASSWORDS.items()}  # the cheapest cost the page accepts
HTML = {"accept": "text/html"}


def verdict_for(e, decision: str, image: bytes) -> Verdict:
    techniques = [TechniqueScore(technique=t, score=0.91 if t == "Smears" else 0.1, threshold=0.5,
                                 flagged=t == "Smears") for t in TECHNIQUES]
    return Verdict(event_id=e.event_id, post_id=e.post_id, author_id="auth", content_hash=content_hash(image, e.text),
                   model=ModelInfo(name="m", version="1"), techniques=techniques, decision=Decision(decision),
                   reasons=["harmful score 0.73 >= 0.41"], harmful_score=0.73, severity="somewhat harmful",
                   severity_scores=[0.3, 0.6, 0.1], policy_id="memeguard-default-harm-v1",
                   explanation="It <b>smears</b>.")


def settings_for(stack, topics, **auth) -> ReviewSettings:
    return ReviewSettings(kafka_bootstrap=stack.bootstrap, redis_url=stack.redis_url, input_topic=topics.input,
                          output_topic=topics.output, reviews_topic=f"reviews-{topics.group}",
                          review_group_id=f"review-{topics.group}", file_root=SEMEVAL.parent,
                          **(auth or {"review_users": USERS}))


def csrf(page_html: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([^"]+)">', page_html).group(1)


def sign_in(client: TestClient, user: str, password: str | None = None) -> str:
    """Through the login form, like a browser; returns the CSRF token of the signed-in page."""
    form = client.get("/login", headers=HTML)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    r = client.post("/login", data={"username": user, "password": password or PASSWORDS[user], "csrf_token": token,
                                    "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return csrf(client.get("/", headers=HTML).text)


def published(stack, s: ReviewSettings) -> list[dict]:
    try:
        return read_json_topic(stack.bootstrap, s.reviews_topic)
    except KeyError:  # the topic was never created: nothing was ever published
        return []


def queue(stack, topics, s: ReviewSettings, store: ReviewStore, events_and_verdicts) -> None:
    produce_events(stack.bootstrap, topics.input, [e for e, _ in events_and_verdicts])
    produce_raw(stack.bootstrap, topics.output, [(e.post_id.encode(), v.model_dump_json().encode())
                                                 for e, v in events_and_verdicts])
    ReviewIngest(s.kafka_bootstrap, s.review_group_id, s.input_topic, s.output_topic, store).drain()


@pytest.fixture
def review(stack, topics):
    store = ReviewStore(stack.redis_url, prefix=f"review-{uuid.uuid4().hex[:6]}:")
    return settings_for(stack, topics), store


@pytest.fixture
def open_app():
    """TestClient entered as a context, so the app's lifespan runs and closes its Kafka producer."""
    with ExitStack() as apps:
        yield lambda settings, store, **client: apps.enter_context(TestClient(create_app(settings, store), **client))


@integration
def test_queue_shows_the_meme_escapes_hostile_text_and_publishes_decisions(stack, topics, review, open_app):
    s, store = review
    img = meme_bytes(4)
    b64 = base64.b64encode(img).decode()
    hostile = event("ev-hostile", text=HOSTILE, image_b64=b64)
    plain = event("ev-plain", text="an ordinary meme", image_b64=b64)
    allowed = event("ev-allowed", text="nothing to see", image_b64=b64)
    tampered = event("ev-tampered", text="text differs from what was judged", image_b64=b64)
    wrong = verdict_for(tampered, "review", img).model_copy(update={"content_hash": "0" * 64})
    queue(stack, topics, s, store, [(hostile, verdict_for(hostile, "review", img)),
                                    (plain, verdict_for(plain, "review", img)),
                                    (allowed, verdict_for(allowed, "allow", img)), (tampered, wrong)])
    assert sorted(store.pending()) == ["ev-hostile", "ev-plain", "ev-tampered"]  # `allow` is not queued

    client = open_app(s, store)
    token = sign_in(client, "alice")
    page = client.get("/item/ev-hostile")
    assert page.status_code == 200
    html = page.text
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert "It &lt;b&gt;smears&lt;/b&gt;." in html  # the explanation is escaped too
    assert "0.730" in html and "Smears — 0.910" in html
    # The card says how harmful, how severe, and which rule of which policy sent it here.
    assert 'id="severity">somewhat harmful<' in html and "0.30 / 0.60 / 0.10" in html
    assert 'id="policy">decided by policy <strong>memeguard-default-harm-v1</strong>' in html
    assert "<li>harmful score 0.73 &gt;= 0.41</li>" in html
    assert 'id="moderator">alice<' in html and 'id="dev-banner"' not in html
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/review.js" defer></script>' in html
    js = client.get("/static/review.js")
    assert js.status_code == 200 and all(f'"{k}"' in js.text for k in "conu")
    image = client.get("/image/ev-hostile")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get("/image/ev-tampered").status_code == 404  # bytes no longer hash to the verdict's content
    assert client.get("/static/../app.py").status_code == 404

    # The form's `moderator` field is ignored: the identity is the signed-in user's.
    r = client.post("/item/ev-hostile/decision", data={"action": "confirm", "moderator": "mod-1", "csrf_token": token},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/item?event_id=")
    client.post("/item/ev-hostile/decision", data={"action": "overturn", "csrf_token": token})  # double submit: no-op
    client.post("/item/ev-plain/decision", data={"action": "overturn", "csrf_token": token})
    reviews = read_json_topic(stack.bootstrap, s.reviews_topic)
    by_id = {m["event_id"]: m for m in reviews}
    assert len(reviews) == 2
    assert by_id["ev-hostile"]["action"] == "confirm" and by_id["ev-hostile"]["final_decision"] == "block"
    assert by_id["ev-hostile"]["labels"] == ["Smears"] and by_id["ev-hostile"]["type"] == "review"
    assert by_id["ev-plain"]["final_decision"] == "allow" and by_id["ev-plain"]["rejected_labels"] == ["Smears"]

    # A refresh, even of a new app process on the same Redis, keeps the decisions.
    again = open_app(s, ReviewStore(stack.redis_url, prefix=store.p))
    sign_in(again, "bob")
    assert store.pending() == ["ev-tampered"]
    shown = again.get("/item/ev-hostile").text
    assert 'id="decision"' in shown and "confirm" in shown and "by alice" in shown and 'id="confirm"' not in shown
    # A re-delivered verdict does not put a decided meme back in the queue.
    store.put_verdict(verdict_for(hostile, "review", img))
    assert store.pending() == ["ev-tampered"]
    assert "ev-tampered" in again.get("/").text


@integration
def test_every_review_message_names_the_authenticated_moderator(stack, topics, open_app):
    img = meme_bytes(6)
    b64 = base64.b64encode(img).decode()
    memes = {name: event(f"id-{name}-{uuid.uuid4().hex[:4]}", text=f"meme for {name}", image_b64=b64)
             for name in ("alice", "bob", "carol", "dev")}
    published: dict[str, dict] = {}
    for name, mode in [("alice", {"review_users": USERS}), ("bob", {"review_users": USERS}),
                       ("carol", {"review_trusted_header": "X-Forwarded-User"}), ("dev", {"review_dev_no_auth": True})]:
        s = settings_for(stack, topics, **mode)
        store = ReviewStore(stack.redis_url, prefix=f"review-{uuid.uuid4().hex[:6]}:")
        e = memes[name]
        queue(stack, topics, s, store, [(e, verdict_for(e, "review", img))])
        # The trusted header is believed only from the proxy's address (loopback by default).
        client = open_app(s, store, client=("127.0.0.1", 50000))
        if name == "alice":
            token = sign_in(client, name)
        elif name == "bob":  # HTTP basic credentials on every request, as a script would send them
            client.auth = (name, PASSWORDS[name])
            token = csrf(client.get("/").text)
        elif name == "carol":
            client.headers["X-Forwarded-User"] = "carol"
            assert client.get("/", headers={"X-Forwarded-User": ""}).status_code == 401
            token = csrf(client.get("/").text)
        else:
            page = client.get("/").text
            assert 'id="dev-banner"' in page and "no authentication" in page  # visibly unauthenticated
            token = csrf(page)
        r = client.post(f"/item/{e.event_id}/decision", data={"action": "confirm", "csrf_token": token,
                                                              "moderator": "someone-else"})
        assert r.status_code == 200, r.text
        published.update({m["event_id"]: m for m in read_json_topic(stack.bootstrap, s.reviews_topic)})
    who = {name: (published[e.event_id]["moderator"], published[e.event_id]["moderator_auth"])
           for name, e in memes.items()}
    assert who == {"alice": ("alice", "password"), "bob": ("bob", "password"), "carol": ("carol", "proxy"),
                   "dev": ("dev-unauthenticated", "none")}


@integration
def test_unauthenticated_and_wrong_passwords_get_401(stack, topics, review, open_app):
    s, store = review
    img = meme_bytes(4)
    e = event("ev-locked", text="locked", image_b64=base64.b64encode(img).decode())
    queue(stack, topics, s, store, [(e, verdict_for(e, "review", img))])
    client = open_app(s, store)

    for path in ("/", "/item/ev-locked", "/image/ev-locked"):
        r = client.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic "), path
    page = client.get("/item/ev-locked", headers=HTML)  # a browser gets the sign-in form, with a 401
    assert page.status_code == 401 and 'id="login-form"' in page.text and 'id="item"' not in page.text
    assert 'name="next" value="/item/ev-locked"' in page.text  # back to the meme after signing in
    assert client.post("/item/ev-locked/decision", data={"action": "confirm"}).status_code == 401
    assert client.post("/undo", data={}).status_code == 401

    # Wrong credentials, every way they can arrive.
    assert client.get("/", auth=("alice", "wrong")).status_code == 401
    assert client.get("/", auth=("mallory", PASSWORDS["alice"])).status_code == 401
    assert client.get("/", auth=("alice", PASSWORDS["bob"])).status_code == 401
    form = client.get("/login", headers=HTML).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    bad = client.post("/login", data={"username": "alice", "password": "wrong", "csrf_token": token},
                      follow_redirects=False)
    assert bad.status_code == 401 and "Wrong user name or password" in bad.text and SESSION_COOKIE not in client.cookies
    client.cookies.set(SESSION_COOKIE, "eyJ1IjoiYWxpY2UiLCJpYXQiOjF9.forged")
    assert client.get("/").status_code == 401
    # A session signed by another process's secret (or before a password change) is worthless here.
    other = open_app(s, store)
    sign_in(other, "alice")
    client.cookies.set(SESSION_COOKIE, other.cookies[SESSION_COOKIE])
    assert client.get("/").status_code == 401
    # The right password works, by basic auth and by the form; nothing was published on the way.
    assert client.get("/", auth=("alice", PASSWORDS["alice"])).status_code == 200
    client.cookies.clear()
    sign_in(client, "bob")
    assert client.get("/item/ev-locked").status_code == 200
    login = client.post("/login", data={"username": "bob", "password": PASSWORDS["bob"],
                                        "csrf_token": "x" * 43}, follow_redirects=False)
    assert login.status_code == 403  # the login form has a CSRF token too
    assert published(stack, s) == []  # no decision got through


@integration
def test_cross_site_post_without_csrf_token_is_refused(stack, topics, review, open_app):
    s, store = review
    img = meme_bytes(4)
    e = event("ev-csrf", text="csrf target", image_b64=base64.b64encode(img).decode())
    queue(stack, topics, s, store, [(e, verdict_for(e, "review", img))])
    alice = open_app(s, store)
    token = sign_in(alice, "alice")
    issued = _issued(s, store)
    for name in (SESSION_COOKIE, CSRF_COOKIE):
        set_cookie = next(c for c in issued if c.startswith(name + "="))
        assert "HttpOnly" in set_cookie and "samesite=strict" in set_cookie.lower(), set_cookie

    cross_site = {"origin": "https://evil.example", "sec-fetch-site": "cross-site"}
    # What a forged form on another site sends: the browser's cookies ride along, no token.
    assert alice.post("/item/ev-csrf/decision", data={"action": "confirm"}, headers=cross_site).status_code == 403
    assert alice.post("/item/ev-csrf/decision", data={"action": "confirm"}).status_code == 403
    assert alice.post("/item/ev-csrf/decision", data={"action": "confirm", "csrf_token": "forged"}).status_code == 403
    # Even a valid token is refused from another site, and a token is bound to its user and its browser.
    assert alice.post("/item/ev-csrf/decision", data={"action": "confirm", "csrf_token": token},
                      headers=cross_site).status_code == 403
    bob = open_app(s, store)
    bob_token = sign_in(bob, "bob")
    assert alice.post("/item/ev-csrf/decision", data={"action": "confirm", "csrf_token": bob_token}).status_code == 403
    stranger = open_app(s, store)
    stranger.auth = ("alice", PASSWORDS["alice"])  # alice's credentials, another browser's cookie jar
    stranger.get("/")
    assert stranger.post("/item/ev-csrf/decision", data={"action": "confirm", "csrf_token": token}).status_code == 403
    assert alice.post("/logout", data={}).status_code == 403
    assert store.pending() == ["ev-csrf"]

    # The page's own form, as the browser submits it (same origin, token in the hidden field or the header).
    ok = alice.post("/item/ev-csrf/decision", data={"action": "confirm"}, headers={"x-csrf-token": token,
                    "sec-fetch-site": "same-origin"}, follow_redirects=False)
    assert ok.status_code == 303 and store.pending() == []
    reviews = read_json_topic(stack.bootstrap, s.reviews_topic)
    assert [(m["event_id"], m["moderator"]) for m in reviews] == [("ev-csrf", "alice")]
    assert alice.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303
    assert alice.get("/").status_code == 401


def _issued(s, store) -> list[str]:
    """Set-Cookie headers of a fresh sign-in (the session cookie is only sent when it is issued)."""
    with TestClient(create_app(s, store)) as fresh:
        form = fresh.get("/login", headers=HTML)
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
        r = fresh.post("/login", data={"username": "alice", "password": PASSWORDS["alice"], "csrf_token": token},
                       follow_redirects=False)
        return [*form.headers.get_list("set-cookie"), *r.headers.get_list("set-cookie")]


@integration
def test_the_same_content_is_one_queue_entry(stack, topics, review, open_app):
    s, store = review
    img = meme_bytes(7)
    b64 = base64.b64encode(img).decode()
    first = event("ev-first", post_id="post-1", text="Same  meme", image_b64=b64)
    repost = event("ev-repost", post_id="post-2", text="same meme", image_b64=b64)  # normalised text: same hash
    other = event("ev-other", post_id="post-3", text="a different caption", image_b64=b64)
    pairs = [(e, verdict_for(e, "review", img)) for e in (first, repost, other)]
    assert pairs[0][1].content_hash == pairs[1][1].content_hash != pairs[2][1].content_hash
    queue(stack, topics, s, store, pairs)
    queue(stack, topics, s, store, pairs[1:2])  # a re-delivered repost is not counted twice
    assert sorted(store.pending()) == ["ev-first", "ev-other"] and store.pending_count() == 2

    client = open_app(s, store)
    token = sign_in(client, "alice")
    moved = client.get("/item?event_id=ev-repost", follow_redirects=False)
    assert moved.status_code == 303 and moved.headers["location"] == "/item?event_id=ev-first"
    card = client.get("/item/ev-first").text
    assert 'id="duplicates"' in card and "post post-2" in card
    client.post("/item/ev-first/decision", data={"action": "confirm", "csrf_token": token})
    # A repost after the decision joins the decided card: nothing queued, nothing published.
    late = event("ev-late", post_id="post-4", text="SAME meme", image_b64=b64)
    queue(stack, topics, s, store, [(late, verdict_for(late, "review", img))])
    assert store.pending() == ["ev-other"]
    assert store.get("ev-first").duplicate_count == 2 and store.card_of("ev-late") == "ev-first"

    reviews = read_json_topic(stack.bootstrap, s.reviews_topic)
    assert len(reviews) == 1
    m = reviews[0]
    assert m["event_id"] == "ev-first" and m["content_hash"] == pairs[0][1].content_hash
    assert m["duplicates"] == [{"event_id": "ev-repost", "post_id": "post-2", "author_id": "auth"}]
    assert m["duplicate_count"] == 1


@integration
def test_undo_publishes_a_retraction_and_requeues_the_meme(stack, topics, review, open_app):
    s, store = review
    img = meme_bytes(8)
    b64 = base64.b64encode(img).decode()
    a, b = (event(f"ev-undo-{i}", text=f"undo {i}", image_b64=b64) for i in (1, 2))
    queue(stack, topics, s, store, [(e, verdict_for(e, "review", img)) for e in (a, b)])
    alice, bob = open_app(s, store), open_app(s, store)
    token, bob_token = sign_in(alice, "alice"), sign_in(bob, "bob")
    assert 'id="undo"' not in alice.get("/").text  # nothing to undo yet

    alice.post(f"/item/{a.event_id}/decision", data={"action": "confirm", "csrf_token": token})
    first = store.get(a.event_id).decision
    page = alice.get("/").text
    assert 'id="undo"' in page and first["review_id"] in page
    assert 'id="undo"' not in bob.get("/").text  # undo is for one's own decision
    assert bob.post("/undo", data={"review_id": first["review_id"], "csrf_token": bob_token}).status_code == 409
    assert alice.post("/undo", data={"review_id": first["review_id"]}).status_code == 403  # CSRF here too

    r = alice.post("/undo", data={"review_id": first["review_id"], "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/item?event_id={a.event_id}"
    assert a.event_id in store.pending() and store.get(a.event_id).decision is None
    # A double click on undo undoes one decision, not the one before it.
    assert alice.post("/undo", data={"review_id": first["review_id"], "csrf_token": token}).status_code == 409
    alice.post(f"/item/{a.event_id}/decision", data={"action": "overturn", "csrf_token": token})
    assert store.get(a.event_id).decision["action"] == "overturn"

    reviews = [m for m in read_json_topic(stack.bootstrap, s.reviews_topic) if m["event_id"] == a.event_id]
    assert [m["type"] for m in reviews] == ["review", "retraction", "review"]  # one key: one partition, in order
    review, retraction, again = reviews
    assert retraction["retracts"] == review["review_id"] == first["review_id"]
    assert retraction["moderator"] == "alice" and retraction["retracted_action"] == "confirm"
    assert retraction["content_hash"] == review["content_hash"] and retraction["post_id"] == review["post_id"]
    assert again["action"] == "overturn" and again["review_id"] not in (review["review_id"], retraction["review_id"])
    assert {m["review_id"] for m in reviews} == {review["review_id"], retraction["review_id"], again["review_id"]}


@integration
def test_verdict_before_its_event_waits_for_the_reference(stack, topics, review, open_app):
    s, store = review
    e = event("ev-late", text="late event", image_url=(SEMEVAL / "images" / "nope.png").as_uri())
    store.put_verdict(verdict_for(e, "review", b""))
    assert store.pending() == []
    store.put_ref(e.event_id, {"text": e.text, "image_url": e.image_url})
    assert store.pending() == ["ev-late"]
    client = open_app(s, store)
    client.auth = ("alice", PASSWORDS["alice"])
    assert client.get("/image/ev-late").status_code == 404  # missing file: a clear 404, not a crash
    assert client.get("/item/unknown").status_code == 404


def test_review_settings_demand_authentication(tmp_path):
    assert verify_password(PASSWORDS["alice"], USERS["alice"]) and not verify_password("nope", USERS["alice"])
    with pytest.raises(ValueError, match="refuses to start without authentication"):
        ReviewSettings()
    with pytest.raises(ValueError, match="not a scrypt hash"):
        ReviewSettings(review_users={"alice": "plain-text-password"})
    with pytest.raises(ValueError, match="cannot be combined"):
        ReviewSettings(review_users=USERS, review_dev_no_auth=True)
    users_file = tmp_path / "users.json"
    users_file.write_text(json.dumps({"carol": USERS["alice"]}))
    assert ReviewSettings(review_users_file=users_file).review_users_file == users_file
    assert ReviewSettings(review_trusted_header="X-Forwarded-User").review_trusted_header == "X-Forwarded-User"


def test_review_command_refuses_to_start_without_authentication():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMEGUARD_REVIEW_")}
    run = subprocess.run([sys.executable, "-m", "consumer.cli", "review"], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    said = " ".join(run.stderr.split())
    assert run.returncode == 2 and "refuses to start without authentication" in said, run.stderr
    assert "Traceback" not in run.stderr and said.count(". ") == 0  # one sentence
