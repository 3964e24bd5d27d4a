"""The moderator review page: FastAPI, server-rendered Jinja templates, one small script for shortcuts.

Safety, since memes carry hostile text: Jinja autoescaping on every template; a Content-Security-Policy
that allows only this origin's own script and images (an injected `<script>` would not run even if an
escape were missed); images are re-encoded to PNG here, and only served when their bytes still hash to
the verdict's `content_hash` — the page shows exactly the content the model judged, nothing else.

Trust, since decisions become training labels: every page but the static files needs an authenticated
moderator (consumer/review/auth.py), every POST a CSRF token, and every review message names the moderator.

Event ids travel in the query string (`/item?event_id=…`, percent-encoded by `card_url` and friends), never in
the path: the schema allows any string, and `/`, `.`, `..` or `%2F` in a path are split, resolved away by
browsers or refused by proxies before a route could see them.
"""

import asyncio
import base64
import binascii
import io
import json
import math
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from confluent_kafka import Consumer, Producer, TopicPartition
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from PIL import Image
from redis.exceptions import RedisClusterException, RedisError

from consumer.core.fetch import FetchPolicy, ImageFetcher
from consumer.core.hashing import content_hash
from consumer.core.images import DecodePolicy
from consumer.errors import InputError
from consumer.kafka.config import client_config
from consumer.review.auth import (
    CSRF_COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    DEV_MODERATOR,
    SESSION_COOKIE,
    Authenticator,
    Busy,
    LoginThrottle,
    Moderator,
    PasswordChecks,
    load_users,
)
from consumer.review.settings import ReviewSettings
from consumer.review.store import Item, ReviewStore
from schemas import MemeEvent
from schemas.review import encode_review

HERE = Path(__file__).parent
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "base-uri 'none'; frame-ancestors 'none'")
ACTIONS = {"confirm": "block", "overturn": "allow"}  # a confirmed `review` becomes a block, an overturned one allowed
MAX_FORM_BYTES = 16 * 1024
REALM = 'Basic realm="memeguard review", charset="UTF-8"'
IMAGE_READ_TIMEOUT_S = 10.0  # reading an inline image's input record back from the broker
DEGRADED = "degraded: Redis is unreachable, decisions are paused"  # every page while the store cannot be reached
# On the queue and card pages while an ingest replica is paused for the store's memory budget (decisions still work)
OVER_BUDGET = "degraded: review store over its memory budget, new memes wait in Kafka until space frees"


class NotAuthenticated(Exception):
    def __init__(self, reason: str = "sign in to review") -> None:
        super().__init__(reason)
        self.reason = reason


def _now() -> str:
    return datetime.now(UTC).isoformat()


def card_url(event_id: str) -> str:
    return f"/item?event_id={quote(event_id, safe='')}"


def image_url(event_id: str) -> str:
    return f"/image?event_id={quote(event_id, safe='')}"


def decision_url(event_id: str) -> str:
    """In the form's action, not a hidden field: HTML parsing and form encoding rewrite CR, LF and NUL in values."""
    return f"/decision?event_id={quote(event_id, safe='')}"


SEVERITIES = ("not harmful", "somewhat harmful", "very harmful")


def review_message(item: Item, action: str, moderator: Moderator, severity: str | None = None) -> dict[str, Any]:
    """`severity`: the moderator's choice for a confirmed (blocked) meme; an overturned one is not harmful."""
    v = item.verdict
    confirmed = action == "confirm"
    if not confirmed:
        severity = "not harmful"
    elif severity not in SEVERITIES[1:]:
        severity = v.severity if v.severity in SEVERITIES[1:] else "somewhat harmful"
    return {
        "type": "review", "review_id": uuid.uuid4().hex,
        "event_id": v.event_id, "post_id": v.post_id, "author_id": v.author_id, "content_hash": v.content_hash,
        "model": v.model.version, "model_decision": v.decision.value, "harmful_score": v.harmful_score,
        "action": action, "final_decision": ACTIONS[action], "severity": severity,
        # Labelled data for the next training run: the flagged techniques, endorsed or rejected.
        "labels": [t.technique for t in v.flagged] if confirmed else [],
        "rejected_labels": [] if confirmed else [t.technique for t in v.flagged],
        "moderator": moderator.name, "moderator_auth": moderator.auth,
        # Later events of the same content (reposts) the decision covers too; the list stops at MAX_DUPLICATES.
        "duplicates": [{k: d.get(k) for k in ("event_id", "post_id", "author_id")} for d in item.duplicates],
        "duplicate_count": item.duplicate_count,
        "reviewed_at": _now(),
    }


def retraction_message(item: Item, moderator: Moderator) -> dict[str, Any]:
    """Undo: the review `retracts` names stops counting; the topic stays append-only."""
    v, d = item.verdict, item.decision or {}
    return {
        "type": "retraction", "review_id": uuid.uuid4().hex, "retracts": d.get("review_id"),
        "event_id": v.event_id, "post_id": v.post_id, "author_id": v.author_id, "content_hash": v.content_hash,
        "action": "undo", "retracted_action": d.get("action"), "retracted_final_decision": d.get("final_decision"),
        "moderator": moderator.name, "moderator_auth": moderator.auth, "reviewed_at": _now(),
    }


def authenticator_for(settings: ReviewSettings) -> Authenticator:
    secret = (settings.review_secret.get_secret_value().encode() if settings.review_secret
              else secrets.token_bytes(32))
    return Authenticator(load_users(settings.review_users, settings.review_users_file), settings.review_trusted_header,
                         settings.review_dev_no_auth, secret, settings.review_session_ttl_s,
                         settings.review_trusted_proxies)


def create_app(settings: ReviewSettings, store: ReviewStore, producer: Producer | None = None) -> FastAPI:
    owns_producer = producer is None
    signing_key = (settings.review_signing_key.get_secret_value().encode() if settings.review_signing_key
                   else None)
    producer = producer or Producer(client_config(settings.kafka_bootstrap, {"acks": "all"}))
    auth = authenticator_for(settings)
    throttle = LoginThrottle(settings.review_login_failures_per_user, settings.review_login_failures_per_address,
                             settings.review_login_window_s)
    password_checks = PasswordChecks(auth, settings.review_password_checks)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        password_checks.close()
        if owns_producer:  # every decision was flushed when it was made; close stops the client's reconnects
            await asyncio.to_thread(producer.close)

    app = FastAPI(title="memeguard review", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    templates = Jinja2Templates(directory=str(HERE / "templates"))  # autoescape on for .html
    templates.env.globals.update(card_url=card_url, image_url=image_url, decision_url=decision_url)
    fetcher = ImageFetcher(FetchPolicy.from_settings(settings))

    def secure(request: Request) -> bool:
        return request.url.scheme == "https"

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # noqa: ANN001, ANN202 (Starlette signature)
        seed = request.cookies.get(CSRF_COOKIE)
        if seed is not None and not (20 <= len(seed) <= 64 and seed.replace("-", "").replace("_", "").isalnum()):
            seed = None
        # A new CSRF cookie only on safe requests: a cross-site POST can never replace the one a browser holds.
        fresh = seed is None and request.method in ("GET", "HEAD")
        request.state.csrf_seed = auth.new_csrf_seed() if fresh else seed
        response = await call_next(request)
        if fresh:
            response.set_cookie(CSRF_COOKIE, request.state.csrf_seed, httponly=True, samesite="strict",
                                secure=secure(request), path="/")
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def client_address(request: Request) -> str | None:
        return request.client.host if request.client else None

    async def password_ok(request: Request, user: str, password: str) -> bool:
        """Every password check, form or basic: refused with 429 (no scrypt) while the address or the user name is
        over its failure limit, with 503 while too many checks are running and waiting."""
        address = client_address(request)
        over = throttle.retry_after(address, user)
        if over is not None:
            kind, seconds = over
            minutes = max(1, math.ceil(seconds / 60))
            which = "for this user" if kind == "user" else "from this address"
            raise HTTPException(429, f"too many failed sign-ins {which}: try again in {minutes} minute"
                                     f"{'s' if minutes > 1 else ''}", headers={"Retry-After": str(math.ceil(seconds))})
        try:
            ok = await password_checks.check(user, password)
        except Busy:
            raise HTTPException(503, "too many sign-ins at once: try again in a moment",
                                headers={"Retry-After": "1"}) from None
        if ok:
            throttle.succeeded(user)
        else:
            throttle.failed(address, user)
        return ok

    async def identify(request: Request) -> Moderator | None:
        if auth.dev_no_auth:
            return Moderator(DEV_MODERATOR, "none")
        if auth.trusted_header:
            value = request.headers.get(auth.trusted_header)
            user = auth.proxy_user(value) if auth.from_proxy(client_address(request)) else None
            if user is not None:
                return Moderator(user, "proxy")
        if not auth.passwords:
            return None
        session = auth.session(request.cookies.get(SESSION_COOKIE))
        if session is not None and store.session_live(session[1], session[0]):
            return Moderator(session[0], "password")
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic" and credentials:
            try:
                name, sep, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            if sep and await password_ok(request, name, password):
                return Moderator(name, "password")
        return None

    async def moderator(request: Request) -> Moderator:
        who = await identify(request)
        if who is None:
            raise NotAuthenticated()
        request.state.moderator = who
        return who

    async def read_form(request: Request) -> dict[str, str]:
        # Parsed here rather than with Form(): FastAPI's form support needs python-multipart, not installed.
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "form too large")
        return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}

    def check_csrf(request: Request, form: dict[str, str], user: str) -> None:
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            raise HTTPException(403, "cross-site request refused")
        token = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
        if not auth.csrf_ok(request.state.csrf_seed, user, token):
            raise HTTPException(403, "the form's CSRF token is missing or stale: reload the page and try again")

    def login_page(request: Request, status: int, error: str | None = None, next_url: str = "/") -> HTMLResponse:
        return templates.TemplateResponse(request, "login.html", {
            "passwords": auth.passwords, "proxy_header": settings.review_trusted_header, "error": error,
            "next": next_url, "csrf_token": auth.csrf_token(request.state.csrf_seed or "", "")}, status_code=status)

    @app.exception_handler(NotAuthenticated)
    async def unauthenticated(request: Request, exc: NotAuthenticated) -> Response:
        # A browser gets the sign-in form (a Basic challenge would pop the browser's own dialog instead);
        # scripts, and clients that already tried basic credentials, get the Basic challenge.
        sent_basic = request.headers.get("authorization", "").lower().startswith("basic ")
        browser = "text/html" in request.headers.get("accept", "") and not sent_basic
        challenge = {"WWW-Authenticate": 'FormBased realm="memeguard review"' if browser else REALM}
        if browser and request.method == "GET":
            response: Response = login_page(request, 401, next_url=safe_next(here(request)))
            response.headers.update(challenge)
            return response
        return JSONResponse({"detail": exc.reason}, status_code=401, headers=challenge if auth.passwords else {})

    @app.exception_handler(RedisError)
    @app.exception_handler(RedisClusterException)
    async def degraded(request: Request, exc: Exception) -> Response:
        """The store is unreachable: one sentence and 503 (a browser gets it as a page), not a bare 500. No
        decision can be taken, since a card's claim and decision live in Redis; the page works again as soon as
        Redis answers (a Redis that lost its data is refilled from the topics, consumer/review/ingest.py)."""
        headers = {"Retry-After": "5"}
        if "text/html" in request.headers.get("accept", ""):
            return templates.TemplateResponse(request, "degraded.html", {"message": DEGRADED}, status_code=503,
                                              headers=headers)
        return JSONResponse({"detail": DEGRADED}, status_code=503, headers=headers)

    def page(request: Request, who: Moderator, item: Item | None) -> HTMLResponse:
        pending = store.pending()
        following = next((e for e in pending if item is None or e != item.verdict.event_id), None)
        recent = [i for i in (store.get(e) for e in store.recent()) if i is not None]
        return templates.TemplateResponse(request, "review.html", {
            "item": item, "pending_count": store.pending_count(), "pending": pending[:20],
            "degraded": OVER_BUDGET if store.over_budget() else None,
            "next_id": following, "recent": recent, "moderator": who, "dev_no_auth": auth.dev_no_auth,
            "session": request.cookies.get(SESSION_COOKIE) is not None and who.auth == "password",
            "undo": store.last_decision(who.name), "csrf_token": auth.csrf_token(request.state.csrf_seed or "", who.name)})

    @app.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request, next: str = "/") -> Response:  # noqa: A002 (the query parameter's name)
        if await identify(request) is not None:
            return RedirectResponse(safe_next(next), status_code=303)
        return login_page(request, 200, next_url=safe_next(next))

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await read_form(request)
        check_csrf(request, form, "")
        next_url = safe_next(form.get("next", "/"))
        user, password = form.get("username", ""), form.get("password", "")
        if not auth.passwords:
            return login_page(request, 401, "Wrong user name or password.", next_url)
        try:
            ok = await password_ok(request, user, password)
        except HTTPException as e:  # 429 / 503: the form again, saying why
            response = login_page(request, e.status_code, e.detail[0].upper() + e.detail[1:] + ".", next_url)
            response.headers.update(e.headers or {})
            return response
        if not ok:
            return login_page(request, 401, "Wrong user name or password.", next_url)
        cookie, sid = auth.make_session(user)
        store.open_session(sid, user, settings.review_session_ttl_s)
        response = RedirectResponse(next_url, status_code=303)
        response.set_cookie(SESSION_COOKIE, cookie, max_age=settings.review_session_ttl_s,
                            httponly=True, samesite="strict", secure=secure(request), path="/")
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        who = await moderator(request)
        check_csrf(request, await read_form(request), who.name)
        session = auth.session(request.cookies.get(SESSION_COOKIE))
        if session is not None:  # ended on the server: a copy of the cookie stops working too
            store.close_session(session[1])
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=secure(request))
        return response

    @app.get("/", response_class=HTMLResponse)
    async def queue(request: Request) -> HTMLResponse:
        who = await moderator(request)
        pending = store.pending(1)
        return page(request, who, store.get(pending[0]) if pending else None)

    @app.get("/item", response_class=HTMLResponse)
    async def show(request: Request, event_id: str) -> Response:
        who = await moderator(request)
        item = store.get(event_id)
        if item is None:
            card = store.card_of(event_id)
            if card is not None:  # a repost: its content has one card
                return RedirectResponse(card_url(card), status_code=303)
            raise HTTPException(404, "No meme with this event id is waiting for review.")
        return page(request, who, item)

    @app.get("/item/{event_id:path}")
    async def show_by_path(request: Request, event_id: str) -> Response:
        """Links from before ids moved to the query string (right for ids a path can carry)."""
        await moderator(request)
        return RedirectResponse(card_url(event_id), status_code=303)

    @app.post("/decision")
    @app.post("/item/{event_id:path}/decision")  # forms rendered before ids moved to the query string
    async def decide(event_id: str, request: Request) -> Response:
        who = await moderator(request)
        form = await read_form(request)
        check_csrf(request, form, who.name)
        action = form.get("action", "")
        card = event_id if store.get(event_id) is not None else (store.card_of(event_id) or event_id)
        if store.get(card) is None:
            raise HTTPException(404, "No meme with this event id is waiting for review.")
        if action not in ACTIONS:
            raise HTTPException(400, "action must be confirm or overturn")
        # A double submit (or a second tab) must not publish twice: claimed items are skipped, and the decision
        # is read again under the claim, so a request that waited behind another sees its decision.
        if store.claim(card):
            try:
                item = store.get(card)
                if item is not None and item.decision is None:
                    message = review_message(item, action, who, form.get("severity"))
                    await asyncio.to_thread(publish, producer, settings.reviews_topic, item.verdict.post_id, message,
                                            signing_key)
                    store.decide(card, message)
            finally:
                store.release(card)
        nxt = store.pending(1)
        return RedirectResponse(card_url(nxt[0]) if nxt else "/", status_code=303)

    @app.post("/undo")
    async def undo(request: Request) -> Response:
        """Undo the moderator's own latest decision; the form names it, so a double click undoes one."""
        who = await moderator(request)
        form = await read_form(request)
        check_csrf(request, form, who.name)
        last = store.last_decision(who.name)
        if last is None or last.decision is None or last.decision.get("review_id") != form.get("review_id"):
            raise HTTPException(409, "that is no longer your latest decision: nothing was undone")
        card = last.verdict.event_id
        if not store.claim(card):
            raise HTTPException(409, "this meme is being decided right now; try again")
        try:
            item = store.get(card)
            if item is None or item.decision is None or item.decision.get("review_id") != form.get("review_id"):
                raise HTTPException(409, "that is no longer your latest decision: nothing was undone")
            retraction = retraction_message(item, who)
            await asyncio.to_thread(publish, producer, settings.reviews_topic, item.verdict.post_id, retraction,
                                    signing_key)
            store.undo(card, who.name, item.decision["review_id"])
        finally:
            store.release(card)
        return RedirectResponse(card_url(card), status_code=303)

    @app.get("/image")
    @app.get("/image/{event_id:path}")  # pages rendered before ids moved to the query string
    async def image(event_id: str, request: Request) -> Response:
        await moderator(request)
        item = store.get(event_id)
        if item is None:
            raise HTTPException(404, "unknown meme")
        try:
            inline = item.ref.get("image_b64")
            if item.ref.get("record") is not None:
                inline = await asyncio.to_thread(inline_image, settings, item.ref["record"], event_id)
            event = MemeEvent(event_id=event_id, post_id=item.verdict.post_id, text=item.ref.get("text"),
                              image_url=item.ref.get("image_url"), image_b64=inline)
            data = await fetcher.fetch(event)
        except (InputError, ValueError) as e:
            raise HTTPException(404, f"the image cannot be loaded: {e}") from e
        if content_hash(data, item.ref.get("text")) != item.verdict.content_hash:
            raise HTTPException(404, "the image no longer matches the content that was moderated")
        try:
            png = await asyncio.to_thread(to_png, data, settings.max_image_pixels, fetcher.policy.decode)
        except InputError as e:  # the worker's bounds: formats, scans, pixels, decode deadline
            raise HTTPException(404, f"the image cannot be shown: {e}") from e
        return Response(png, media_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/static/{name}")
    def static(name: str) -> FileResponse:
        if name not in ("review.js", "review.css"):
            raise HTTPException(404)
        return FileResponse(HERE / "static" / name, headers={"Cache-Control": "no-cache"},
                            media_type="text/javascript" if name.endswith(".js") else "text/css")

    return app


def inline_image(settings: ReviewSettings, record: list[Any], event_id: str) -> str:
    """The `image_b64` of the input record a ref points at, read back from the broker: the store keeps where inline
    bytes are, never the bytes. ValueError when the record is gone (past retention) or is not this event's."""
    topic, partition, offset = record
    consumer = Consumer(client_config(settings.kafka_bootstrap, {
        "group.id": f"{settings.review_group_id}-images", "enable.auto.commit": False,
        "auto.offset.reset": "error", "fetch.message.max.bytes": 16 * 1024 * 1024}))
    try:
        consumer.assign([TopicPartition(str(topic), int(partition), int(offset))])
        deadline = time.monotonic() + IMAGE_READ_TIMEOUT_S
        while time.monotonic() < deadline:
            m = consumer.poll(min(1.0, max(0.0, deadline - time.monotonic())))
            if m is None:
                continue
            if m.error() is not None:
                raise ValueError(f"the input record is no longer on {topic} ({m.error().str()})")
            try:
                payload = json.loads(m.value())
            except (TypeError, UnicodeDecodeError, json.JSONDecodeError):
                payload = None
            if m.offset() != offset or not isinstance(payload, dict) or payload.get("event_id") != event_id \
                    or not isinstance(payload.get("image_b64"), str):
                raise ValueError(f"the input record at {topic}/{partition}@{offset} is not this event's")
            return payload["image_b64"]
        raise ValueError(f"the input record could not be read from {topic} in {IMAGE_READ_TIMEOUT_S:.0f} s")
    finally:
        consumer.close()


def here(request: Request) -> str:
    """The request's path and query as the client sent them (still percent-encoded), for `next`."""
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if raw else quote(request.url.path)
    return f"{path}?{request.url.query}" if request.url.query else path


def safe_next(url: str) -> str:
    """Only a path on this site (no open redirect through `next`)."""
    return url if url.startswith("/") and not url.startswith("//") and "\\" not in url and url.isprintable() else "/"


def to_png(data: bytes, max_pixels: int, policy: DecodePolicy) -> bytes:
    """Re-encoded, so whatever else the original bytes carried never reaches the browser. Decoded under the
    worker's bounds (format allow-list, JPEG scan cap, pixel cap, decode deadline: `DecodePolicy.decode`),
    downscaled on decode (both sides stay >= 2 x 450 px before the thumbnail)."""
    image: Image.Image = policy.decode(data, max_pixels, target=450)
    image.thumbnail((900, 900))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def publish(producer: Producer, topic: str, key: str, message: dict[str, Any], signing_key: bytes | None = None
            ) -> None:
    """Publish a review or retraction, signed with MEMEGUARD_REVIEW_SIGNING_KEY (`dataset build` uses only
    reviews that key verifies: the moderator, time and labels are read from the signed content)."""
    errors: list[str] = []
    producer.produce(topic, key=key.encode(), value=encode_review(topic, message, signing_key),
                     on_delivery=lambda err, _m: errors.append(str(err)) if err else None)
    if producer.flush(15) > 0 or errors:
        raise HTTPException(503, f"the review could not be published to {topic}: {errors[:1] or 'timeout'}; try again")
