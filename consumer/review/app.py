"""The moderator review page: FastAPI, server-rendered Jinja templates, one small script for shortcuts.

Safety, since memes carry hostile text: Jinja autoescaping on every template; a Content-Security-Policy
that allows only this origin's own script and images (an injected `<script>` would not run even if an
escape were missed); images are re-encoded to PNG here, and only served when their bytes still hash to
the verdict's `content_hash` — the page shows exactly the content the model judged, nothing else.
"""

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from confluent_kafka import Producer
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from PIL import Image

from consumer.errors import InputError
from consumer.fetch import FetchPolicy, ImageFetcher
from consumer.hashing import content_hash
from consumer.images import decode_image
from consumer.kafka_config import client_config
from consumer.review.store import Item, ReviewStore
from consumer.settings import ReviewSettings
from schemas import MemeEvent

HERE = Path(__file__).parent
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "base-uri 'none'; frame-ancestors 'none'")
ACTIONS = {"confirm": "block", "overturn": "allow"}  # a confirmed `review` becomes a block, an overturned one allowed


def review_message(item: Item, action: str, moderator: str) -> dict[str, Any]:
    v = item.verdict
    confirmed = action == "confirm"
    return {
        "event_id": v.event_id, "post_id": v.post_id, "author_id": v.author_id, "content_hash": v.content_hash,
        "model": v.model.version, "model_decision": v.decision.value, "harmful_score": v.harmful_score,
        "action": action, "final_decision": ACTIONS[action],
        # Labelled data for the next training run: the flagged techniques, endorsed or rejected.
        "labels": [t.technique for t in v.flagged] if confirmed else [],
        "rejected_labels": [] if confirmed else [t.technique for t in v.flagged],
        "moderator": moderator, "reviewed_at": datetime.now(UTC).isoformat(),
    }


def create_app(settings: ReviewSettings, store: ReviewStore, producer: Producer | None = None) -> FastAPI:
    owns_producer = producer is None
    producer = producer or Producer(client_config(settings.kafka_bootstrap, {"acks": "all"}))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if owns_producer:  # every decision was flushed when it was made; close stops the client's reconnects
            await asyncio.to_thread(producer.close)

    app = FastAPI(title="memeguard review", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    templates = Jinja2Templates(directory=str(HERE / "templates"))  # autoescape on for .html
    fetcher = ImageFetcher(FetchPolicy.from_settings(settings))

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # noqa: ANN001, ANN202 (Starlette signature)
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    def page(request: Request, item: Item | None) -> HTMLResponse:
        pending = store.pending()
        following = next((e for e in pending if item is None or e != item.verdict.event_id), None)
        recent = [i for i in (store.get(e) for e in store.recent()) if i is not None]
        return templates.TemplateResponse(request, "review.html", {
            "item": item, "pending_count": store.pending_count(), "pending": pending[:20],
            "next_id": following, "recent": recent})

    @app.get("/", response_class=HTMLResponse)
    def queue(request: Request) -> HTMLResponse:
        pending = store.pending(1)
        return page(request, store.get(pending[0]) if pending else None)

    @app.get("/item/{event_id}", response_class=HTMLResponse)
    def show(request: Request, event_id: str) -> HTMLResponse:
        item = store.get(event_id)
        if item is None:
            raise HTTPException(404, "No meme with this event id is waiting for review.")
        return page(request, item)

    @app.post("/item/{event_id}/decision")
    async def decide(event_id: str, request: Request) -> Response:
        # Parsed here rather than with Form(): FastAPI's form support needs python-multipart, not installed.
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        action = form.get("action", [""])[0]
        moderator = form.get("moderator", ["moderator"])[0]
        item = store.get(event_id)
        if item is None:
            raise HTTPException(404, "No meme with this event id is waiting for review.")
        if action not in ACTIONS:
            raise HTTPException(400, "action must be confirm or overturn")
        # A double submit (or a second tab) must not publish twice: decided items and claimed ones are skipped.
        if item.decision is None and store.claim(event_id):
            message = review_message(item, action, moderator[:100])
            try:
                await asyncio.to_thread(publish, producer, settings.reviews_topic, item.verdict.post_id, message)
            except Exception:
                store.release(event_id)  # not published: the next attempt may publish
                raise
            store.decide(event_id, message)
        nxt = store.pending(1)
        return RedirectResponse(f"/item/{nxt[0]}" if nxt else "/", status_code=303)

    @app.get("/image/{event_id}")
    async def image(event_id: str) -> Response:
        item = store.get(event_id)
        if item is None:
            raise HTTPException(404, "unknown meme")
        try:
            event = MemeEvent(event_id=event_id, post_id=item.verdict.post_id, text=item.ref.get("text"),
                              image_url=item.ref.get("image_url"), image_b64=item.ref.get("image_b64"))
            data = await fetcher.fetch(event)
        except (InputError, ValueError) as e:
            raise HTTPException(404, f"the image cannot be loaded: {e}") from e
        if content_hash(data, item.ref.get("text")) != item.verdict.content_hash:
            raise HTTPException(404, "the image no longer matches the content that was moderated")
        return Response(await asyncio.to_thread(to_png, data, settings.max_image_pixels), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/static/{name}")
    def static(name: str) -> FileResponse:
        if name not in ("review.js", "review.css"):
            raise HTTPException(404)
        return FileResponse(HERE / "static" / name,
                            media_type="text/javascript" if name.endswith(".js") else "text/css")

    return app


def to_png(data: bytes, max_pixels: int) -> bytes:
    """Re-encoded, so whatever else the original bytes carried never reaches the browser."""
    image: Image.Image = decode_image(data, max_pixels)
    image.thumbnail((900, 900))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def publish(producer: Producer, topic: str, key: str, message: dict[str, Any]) -> None:
    import json

    errors: list[str] = []
    producer.produce(topic, key=key.encode(), value=json.dumps(message).encode(),
                     on_delivery=lambda err, _m: errors.append(str(err)) if err else None)
    if producer.flush(15) > 0 or errors:
        raise HTTPException(503, f"the review could not be published to {topic}: {errors[:1] or 'timeout'}; try again")
