"""The review page against a hostile outside (issue 27, item 7), over a real broker and a real redis-server:
any event id the schema allows can be opened, shown and decided; password guessing is throttled per address and
per user name and never runs more scrypt checks at once than configured; logout ends the session on the server;
the trusted header is refused next to passwords and believed only from the configured proxies."""

import base64
import html
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import consumer.review.auth as review_auth
from consumer.review.app import card_url, create_app, decision_url
from consumer.review.auth import SESSION_COOKIE, TRUSTED_HEADER_WITH_PASSWORDS, Authenticator
from consumer.review.settings import ReviewSettings
from consumer.review.store import ReviewStore
from schemas import MemeEvent
from tests.memes import SEMEVAL, event, meme_bytes
from tests.test_review import HTML, PASSWORDS, USERS, csrf, published, queue, sign_in, verdict_for

REPO = Path(__file__).resolve().parents[1]
integration = pytest.mark.integration

# Event ids the schema allows that a path segment cannot carry as such: separators, dot segments, query and
# fragment characters, percent signs, whitespace and control characters, non-ASCII, the longest allowed.
HOSTILE_IDS = ["a/b", "../../etc/passwd", "..", ".", "x/decision", "/leading", "trailing/", "a//b", "?q=1&x=2#frag",
               "50% off %2F %zz", " spaced + plus ", "line\r\nbreak\ttab\x00nul", "ünï/cødé 😀", "{tag}",
               "back\\slash", "é" * 200]


def settings_for(stack, topics, **extra) -> ReviewSettings:
    auth = {} if "review_trusted_header" in extra or "review_dev_no_auth" in extra else {"review_users": USERS}
    return ReviewSettings(kafka_bootstrap=stack.bootstrap, redis_url=stack.redis_url, input_topic=topics.input,
                          output_topic=topics.output, reviews_topic=f"reviews-{topics.group}",
                          review_group_id=f"review-{topics.group}", file_root=SEMEVAL.parent, **auth, **extra)


@pytest.fixture
def new_store(stack):
    return lambda: ReviewStore(stack.redis_url, prefix=f"review-{uuid.uuid4().hex[:6]}:")


@pytest.fixture
def open_app():
    """TestClient entered as a context (the app's lifespan runs); `client` sets the peer address it reports."""
    with ExitStack() as apps:
        yield lambda settings, store, **client: apps.enter_context(TestClient(create_app(settings, store), **client))


def links(page: str, attribute: str) -> list[str]:
    """The URLs a browser would follow, entities decoded."""
    return [html.unescape(u) for u in re.findall(rf'{attribute}="([^"]*)"', page)]


def queue_links(page: str) -> dict[str, str]:
    """Queue entry text (the event id) → its link."""
    block = re.search(r'<ol class="queue">(.*?)</ol>', page, re.S).group(1)
    return {html.unescape(text): html.unescape(url) for url, text in re.findall(r'<a href="([^"]*)">(.*?)</a>', block, re.S)}


@integration
def test_any_event_id_the_schema_allows_can_be_opened_shown_and_decided(stack, topics, new_store, open_app):
    s, store = settings_for(stack, topics), new_store()
    img = meme_bytes(3)
    b64 = base64.b64encode(img).decode()
    memes = [event(eid, post_id=f"post-{i}", text=f"hostile id {i}", image_b64=b64) for i, eid in enumerate(HOSTILE_IDS)]
    assert [MemeEvent.model_validate(m.model_dump()).event_id for m in memes] == HOSTILE_IDS  # the schema allows them
    queue(stack, topics, s, store, [(m, verdict_for(m, "review", img)) for m in memes])
    assert sorted(store.pending()) == sorted(HOSTILE_IDS)
    client = open_app(s, store)

    # Signed out, a card's link leads through the sign-in form back to that card.
    target = "a/b"
    form = client.get(card_url(target), headers=HTML)
    assert form.status_code == 401 and 'id="login-form"' in form.text
    next_url = links(form.text, 'name="next" value')[0]
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    back = client.post("/login", data={"username": "alice", "password": PASSWORDS["alice"], "csrf_token": token,
                                       "next": next_url}, follow_redirects=False)
    assert back.status_code == 303 and back.headers["location"] == card_url(target)

    token = csrf(client.get("/").text)
    listed = queue_links(client.get("/").text)
    assert set(listed) == set(HOSTILE_IDS)
    for eid in HOSTILE_IDS:
        card = client.get(listed[eid])  # the link as the page wrote it, followed as a browser would
        assert card.status_code == 200, (eid, card.status_code)
        shown = html.unescape(re.search(r'id="item" data-event-id="([^"]*)"', card.text).group(1))
        assert shown == eid
        image = client.get(links(card.text, '<img class="meme" src')[0])
        assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n", eid
        action = html.unescape(re.search(r'<form method="post" action="([^"]*)" id="decide">', card.text).group(1))
        decided = client.post(action, data={"action": "confirm", "csrf_token": token}, follow_redirects=False)
        assert decided.status_code == 303, (eid, decided.status_code, decided.text[:200])
        assert store.get(eid).decision is not None, eid
    assert store.pending() == []
    assert sorted(m["event_id"] for m in published(stack, s)) == sorted(HOSTILE_IDS)

    # A repost with such an id redirects to its card; undo leads back to the card it re-queued.
    repost = event("re/post/..", post_id="post-repost", text="hostile id 0", image_b64=b64)
    queue(stack, topics, s, store, [(repost, verdict_for(repost, "review", img))])
    moved = client.get(card_url("re/post/.."), follow_redirects=False)
    assert moved.status_code == 303 and moved.headers["location"] == card_url(HOSTILE_IDS[0])
    last = store.get(HOSTILE_IDS[-1]).decision
    undone = client.post("/undo", data={"review_id": last["review_id"], "csrf_token": token}, follow_redirects=False)
    assert undone.status_code == 303 and client.get(undone.headers["location"]).status_code == 200
    assert store.pending() == [HOSTILE_IDS[-1]]


def count_scrypt(monkeypatch) -> dict[str, int]:
    """Counts password checks (calls, and the most running at once) around the real scrypt."""
    seen = {"calls": 0, "running": 0, "most": 0}
    lock = threading.Lock()
    real = review_auth.verify_password

    def counted(password: str, stored: str) -> bool:
        with lock:
            seen["calls"] += 1
            seen["running"] += 1
            seen["most"] = max(seen["most"], seen["running"])
        try:
            return real(password, stored)
        finally:
            with lock:
                seen["running"] -= 1

    monkeypatch.setattr(review_auth, "verify_password", counted)
    return seen


def try_sign_in(client: TestClient, user: str, password: str):
    form = client.get("/login", headers=HTML)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    return client.post("/login", data={"username": user, "password": password, "csrf_token": token, "next": "/"},
                       follow_redirects=False)


@integration
def test_failed_sign_ins_are_throttled_per_user_and_per_address(stack, topics, new_store, monkeypatch):
    s = settings_for(stack, topics, review_login_failures_per_user=3, review_login_failures_per_address=6)
    seen = count_scrypt(monkeypatch)
    app = create_app(s, new_store())  # one process; its clients come from several addresses

    def client_at(address: str) -> TestClient:
        return TestClient(app, client=(address, 40000))  # not entered: the lifespan runs once, for `here`

    with TestClient(app, client=("198.51.100.1", 40000)) as here:
        for _ in range(3):
            assert try_sign_in(here, "alice", "guess").status_code == 401
        calls = seen["calls"]
        # alice's name is over its limit: refused before any scrypt, the right password too, form or basic auth.
        refused = try_sign_in(here, "alice", PASSWORDS["alice"])
        assert refused.status_code == 429 and "too many failed sign-ins for this user" in refused.text.lower()
        assert 0 < int(refused.headers["retry-after"]) <= 900 and SESSION_COOKIE not in here.cookies
        assert here.get("/", auth=("alice", PASSWORDS["alice"])).status_code == 429
        assert try_sign_in(client_at("198.51.100.2"), "alice", PASSWORDS["alice"]).status_code == 429  # any address
        assert seen["calls"] == calls
        # Another moderator still signs in, from the guesser's address too.
        assert try_sign_in(here, "bob", PASSWORDS["bob"]).status_code == 303
        assert here.get("/").status_code == 200

        # One address spreading its guesses over many names is stopped by the address limit.
        sprayer = client_at("203.0.113.7")
        for i in range(6):
            assert try_sign_in(sprayer, f"user-{i}", "guess").status_code == 401
        calls = seen["calls"]
        blocked = try_sign_in(sprayer, "bob", PASSWORDS["bob"])
        assert blocked.status_code == 429 and "from this address" in blocked.text and seen["calls"] == calls
        assert try_sign_in(client_at("203.0.113.8"), "bob", PASSWORDS["bob"]).status_code == 303


@integration
def test_a_sign_in_flood_runs_a_bounded_number_of_password_checks(stack, topics, new_store, open_app, monkeypatch):
    s = settings_for(stack, topics, review_password_checks=2, review_login_failures_per_user=1000,
                     review_login_failures_per_address=1000)
    store = new_store()
    img = meme_bytes(2)
    e = event(f"ev-flood-{uuid.uuid4().hex[:6]}", text="decided during a flood", image_b64=base64.b64encode(img).decode())
    queue(stack, topics, s, store, [(e, verdict_for(e, "review", img))])
    seen = count_scrypt(monkeypatch)
    flood = open_app(s, store)
    moderator = open_app(s, store)
    token = sign_in(moderator, "alice")

    statuses: list[int] = []
    start = threading.Barrier(31)

    def guess(i: int) -> None:
        start.wait()
        statuses.append(flood.get("/", auth=(f"flood-{i}", "guess")).status_code)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    start.wait()
    # While the flood runs, a signed-in moderator's page and decision are served (no scrypt, no waiting behind it).
    assert moderator.get("/").status_code == 200
    decided = moderator.post(decision_url(e.event_id), data={"action": "confirm", "csrf_token": token},
                             follow_redirects=False)
    assert decided.status_code == 303 and store.get(e.event_id).decision is not None
    for t in threads:
        t.join(120)
    assert seen["most"] <= 2, seen
    assert set(statuses) <= {401, 503} and statuses.count(401) >= 2, statuses
    assert 503 in statuses, statuses  # 30 at once: past 2 running + 8 waiting, refused at once


@integration
def test_logout_ends_the_session_on_the_server(stack, topics, new_store, open_app):
    s = settings_for(stack, topics, review_secret="a shared secret for every replica")
    store = new_store()
    first, second = open_app(s, store), open_app(s, store)  # two replicas behind one load balancer
    token = sign_in(first, "alice")
    copied = first.cookies[SESSION_COOKIE]
    thief = open_app(s, store)
    thief.cookies.set(SESSION_COOKIE, copied)
    assert thief.get("/").status_code == 200
    other_tab = open_app(s, store)
    sign_in(other_tab, "alice")  # another sign-in of the same moderator

    assert first.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303
    assert thief.get("/").status_code == 401  # the copied cookie is dead, on this replica ...
    fresh = open_app(s, store)
    fresh.cookies.set(SESSION_COOKIE, copied)
    assert fresh.get("/").status_code == 401  # ... and on any other
    assert second.get("/", headers={"cookie": f"{SESSION_COOKIE}={copied}"}).status_code == 401
    assert other_tab.get("/").status_code == 200  # other sign-ins stand


def test_trusted_header_is_refused_next_to_passwords(tmp_path):
    with pytest.raises(ValueError, match="cannot be combined with review users"):
        ReviewSettings(review_users=USERS, review_trusted_header="X-Forwarded-User")
    users_file = tmp_path / "users.json"
    users_file.write_text(json.dumps(USERS))
    with pytest.raises(ValueError, match="cannot be combined with review users"):
        ReviewSettings(review_users_file=users_file, review_trusted_header="X-Forwarded-User")
    with pytest.raises(ValueError, match="cannot be combined"):
        Authenticator(USERS, "X-Forwarded-User", False, b"k" * 32, 3600)
    with pytest.raises(ValueError, match="not an IP address or CIDR"):
        ReviewSettings(review_trusted_header="X-Forwarded-User", review_trusted_proxies=["proxy.internal"])
    assert ". " not in TRUSTED_HEADER_WITH_PASSWORDS  # one sentence

    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMEGUARD_REVIEW_")}
    env |= {"MEMEGUARD_REVIEW_USERS": json.dumps(USERS), "MEMEGUARD_REVIEW_TRUSTED_HEADER": "X-Forwarded-User"}
    run = subprocess.run([sys.executable, "-m", "consumer.cli", "review"], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    said = " ".join(run.stderr.split())
    assert run.returncode == 2 and "cannot be combined with review users" in said, run.stderr
    assert "Traceback" not in run.stderr and said.count(". ") == 0


@integration
def test_trusted_header_is_believed_only_from_the_configured_proxies(stack, topics, new_store, open_app, monkeypatch):
    header = {"X-Forwarded-User": "carol"}
    s = settings_for(stack, topics, review_trusted_header="X-Forwarded-User")  # proxies: loopback by default
    store = new_store()
    img = meme_bytes(1)
    e = event(f"ev-proxy-{uuid.uuid4().hex[:6]}", text="proxy only", image_b64=base64.b64encode(img).decode())
    queue(stack, topics, s, store, [(e, verdict_for(e, "review", img))])

    proxy = open_app(s, store, client=("127.0.0.1", 50000))
    page = proxy.get("/", headers=header)
    assert page.status_code == 200 and 'id="moderator">carol<' in page.text
    assert open_app(s, store, client=("::ffff:127.0.0.1", 1)).get("/", headers=header).status_code == 200  # dual stack
    direct = open_app(s, store, client=("203.0.113.9", 50000))  # reached the port without the proxy
    assert direct.get("/", headers=header).status_code == 401
    assert direct.post(decision_url(e.event_id), headers=header, data={"action": "confirm"}).status_code == 401
    assert store.pending() == [e.event_id] and published(stack, s) == []

    monkeypatch.setenv("MEMEGUARD_REVIEW_TRUSTED_PROXIES", "10.20.0.0/16, 192.0.2.1")
    elsewhere = settings_for(stack, topics, review_trusted_header="X-Forwarded-User")
    assert elsewhere.review_trusted_proxies == ["10.20.0.0/16", "192.0.2.1"]
    assert open_app(elsewhere, store, client=("10.20.3.4", 1)).get("/", headers=header).status_code == 200
    assert open_app(elsewhere, store, client=("192.0.2.1", 1)).get("/", headers=header).status_code == 200
    assert open_app(elsewhere, store, client=("127.0.0.1", 1)).get("/", headers=header).status_code == 401


@integration
def test_inline_image_bytes_are_not_kept_in_redis(stack, topics, new_store, open_app):
    import redis

    s, store = settings_for(stack, topics), new_store()
    img = meme_bytes(9)
    b64 = base64.b64encode(img).decode()
    e = event(f"ev-inline-{uuid.uuid4().hex[:6]}", text="inline image", image_b64=b64)
    queue(stack, topics, s, store, [(e, verdict_for(e, "review", img))])
    assert store.pending() == [e.event_id]

    r = redis.Redis.from_url(stack.redis_url, socket_timeout=5)
    values = []
    for key in r.scan_iter(match=f"{store.p}*"):
        kind = r.type(key)
        values += ([r.get(key)] if kind == b"string" else r.lrange(key, 0, -1) if kind == b"list"
                   else r.zrange(key, 0, -1) if kind == b"zset" else [])
    assert values and not any(b64[:200].encode() in v for v in values)  # no copy of the bytes, whole or in part
    assert store.get(e.event_id).ref["record"][0] == topics.input

    client = open_app(s, store)
    client.auth = ("alice", PASSWORDS["alice"])
    image = client.get(f"/image?event_id={e.event_id}")  # read back from the input topic, checked against the hash
    assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
    # A record past the topic's retention (here: an offset never written) is a clear 404, not a hang.
    gone = event(f"ev-gone-{uuid.uuid4().hex[:6]}", text="gone", image_b64=b64)
    store.add(verdict_for(gone, "review", img), {"text": gone.text, "record": [topics.input, 0, 10**9]})
    started = time.monotonic()
    missing = client.get(f"/image?event_id={gone.event_id}")
    assert missing.status_code == 404 and "no longer on" in missing.text and time.monotonic() - started < 15
