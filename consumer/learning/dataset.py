"""`memeguard dataset build`: moderator reviews joined with their verdicts and events -> a SemEval-format dataset.

OUT/dataset.json   SemEval records (`id`, `text`, `image`, `labels`) plus what the review knew: `decision`
                   (block | allow), `content_hash`, `model_version`, `model_decision`, `scores`, `moderators`.
OUT/images/        one image per content hash, fetched through the worker's ImageFetcher (same SSRF and size
                   rules) and kept only when its bytes + text still hash to the reviewed content hash.
OUT/manifest.json  counts per label and decision, review time range, model versions, disagreements, skips.

Idempotent: records are sorted by content hash, images are named by it and written only when missing, and
nothing in the output depends on when the command ran, so re-running over the same topics rewrites the same bytes.
"""

import asyncio
import io
import json
import logging
import os
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError
from tqdm import tqdm

from consumer.core.fetch import FetchPolicy, ImageFetcher
from consumer.core.hashing import content_hash
from consumer.errors import InputError
from consumer.kafka.topic_reader import read_topic
from consumer.learning.reviews import Resolution, Resolved, resolve
from consumer.settings import WorkerSettings
from schemas import MemeEvent, Verdict

log = logging.getLogger(__name__)

DATASET_FILE = "dataset.json"
MANIFEST_FILE = "manifest.json"
IMAGES_DIR = "images"
RESOLUTION_POLICY = ("retractions cancel the review they name; each moderator's latest standing review per "
                     "content hash is their vote; the majority of moderators is the label; ties are "
                     "disagreements, recorded and left out")
_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}


@dataclass(frozen=True)
class Sources:
    reviews_topic: str
    verdict_topic: str
    input_topic: str


def write_atomic(path: Path, data: bytes) -> None:
    """Write next to the target and rename: a reader never sees half a file, and equal bytes stay untouched."""
    if path.is_file() and path.read_bytes() == data:
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _event_id(value: bytes | None) -> str | None:
    try:
        payload = json.loads(value or b"")
    except (ValueError, RecursionError):
        return None
    return payload.get("event_id") if isinstance(payload, dict) and isinstance(payload.get("event_id"), str) else None


def _index_verdicts(records) -> dict[str, list[Verdict]]:
    out: dict[str, list[Verdict]] = {}
    for r in records:
        try:
            v = Verdict.model_validate_json(r.value or b"")
        except ValidationError:
            continue
        out.setdefault(v.event_id, []).append(v)
    return out


def _index_events(records) -> dict[str, MemeEvent]:
    out: dict[str, MemeEvent] = {}
    for r in records:
        try:
            e = MemeEvent.model_validate_json(r.value or b"")
        except (ValidationError, ValueError):
            continue
        out.setdefault(e.event_id, e)  # the first event of an id is the one the worker judged first
    return out


def _verdict_for(review: dict[str, Any], verdicts: dict[str, list[Verdict]]) -> Verdict | None:
    """The verdict the moderator saw: same event and content, the model version the review names if present."""
    candidates = [v for v in verdicts.get(review["event_id"], []) if v.content_hash == review["content_hash"]]
    same_model = [v for v in candidates if v.model.version == review.get("model")]
    pool = same_model or candidates
    return max(pool, key=lambda v: v.created_at) if pool else None


def _image_name(data: bytes, h: str) -> str:
    try:
        with Image.open(io.BytesIO(data)) as im:
            ext = _EXT.get(im.format or "", "img")
    except (UnidentifiedImageError, OSError):
        ext = "img"
    return f"{h[:32]}.{ext}"


def _record(res: Resolved, verdict: Verdict, event: MemeEvent, image: str) -> dict[str, Any]:
    review = res.latest or {}
    return {
        "id": res.content_hash[:32],
        "text": event.text or "",
        "image": image,
        # Confirmed reviews endorse the techniques the model flagged; an overturned meme has none.
        "labels": sorted(review.get("labels") or []) if res.decision == "block" else [],
        "rejected_labels": sorted(review.get("rejected_labels") or []),
        "decision": res.decision,
        "content_hash": res.content_hash,
        "event_id": review.get("event_id"),
        "post_id": review.get("post_id"),
        "model_version": verdict.model.version,
        "model_name": verdict.model.name,
        "model_decision": verdict.decision.value,
        "scores": {t.technique: t.score for t in verdict.techniques},
        "harmful_score": verdict.harmful_score,
        "moderators": {v.moderator: v.decision for v in res.votes},
        "reviewed_at": max(str(v.review.get("reviewed_at") or "") for v in res.votes),
    }


async def _fetch_all(fetcher: ImageFetcher, jobs: list[tuple[Resolved, MemeEvent]], progress: bool
                     ) -> list[bytes | InputError]:
    bar = tqdm(total=len(jobs), desc="fetch images", unit="meme", disable=not progress, file=sys.stderr)

    async def one(event: MemeEvent) -> bytes | InputError:
        try:
            return await fetcher.fetch(event)
        except InputError as e:
            return e
        finally:
            bar.update(1)

    try:
        return list(await asyncio.gather(*(one(e) for _, e in jobs)))
    finally:
        bar.close()
        await fetcher.close()


def build_dataset(bootstrap: str, sources: Sources, out_dir: Path, fetch_policy: FetchPolicy,
                  progress: bool = True) -> dict[str, Any]:
    """Read the three topics, resolve decisions, fetch images, write OUT; returns the manifest."""
    resolution: Resolution = resolve(read_topic(bootstrap, sources.reviews_topic))
    wanted = {str((r.latest or {}).get("event_id")) for r in resolution.labelled}
    keep = lambda record: _event_id(record.value) in wanted  # noqa: E731 (only the reviewed events are kept)
    verdicts = _index_verdicts(read_topic(bootstrap, sources.verdict_topic, keep=keep))
    events = _index_events(read_topic(bootstrap, sources.input_topic, keep=keep))
    skipped: list[dict[str, str]] = []
    jobs: list[tuple[Resolved, Verdict, MemeEvent]] = []
    for res in resolution.labelled:
        review = res.latest or {}
        verdict, event = _verdict_for(review, verdicts), events.get(str(review.get("event_id")))
        if verdict is None or event is None:
            what = "verdict" if verdict is None else "input event"
            skipped.append({"content_hash": res.content_hash, "reason": f"its {what} is no longer on the topic"})
            continue
        jobs.append((res, verdict, event))
    images = asyncio.run(_fetch_all(ImageFetcher(fetch_policy), [(r, e) for r, _, e in jobs], progress))

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / IMAGES_DIR).mkdir(exist_ok=True)
    records = []
    for (res, verdict, event), data in zip(jobs, images, strict=True):
        if isinstance(data, InputError):
            skipped.append({"content_hash": res.content_hash, "reason": f"image fetch failed: {data}"})
            continue
        if content_hash(data, event.text) != res.content_hash:
            skipped.append({"content_hash": res.content_hash,
                            "reason": "the image no longer hashes to the reviewed content (changed at its URL)"})
            continue
        name = _image_name(data, res.content_hash)
        write_atomic(out_dir / IMAGES_DIR / name, data)
        records.append(_record(res, verdict, event, name))
    records.sort(key=lambda r: r["content_hash"])
    manifest = dataset_manifest(records, resolution, skipped, sources)
    write_atomic(out_dir / DATASET_FILE, json.dumps(records, indent=1, ensure_ascii=False, sort_keys=True).encode())
    write_atomic(out_dir / MANIFEST_FILE, json.dumps(manifest, indent=1, ensure_ascii=False, sort_keys=True).encode())
    return manifest


def dataset_manifest(records: list[dict[str, Any]], resolution: Resolution, skipped: list[dict[str, str]],
                     sources: Sources) -> dict[str, Any]:
    multi = [r for r in resolution.resolved if len(r.votes) > 1]
    times = sorted(r["reviewed_at"] for r in records if r["reviewed_at"])
    return {
        "format": "SemEval-2021 Task 6 records (id, text, image, labels) + review fields; images in images/",
        "records": len(records),
        "decisions": dict(sorted(Counter(r["decision"] for r in records).items())),
        "labels": dict(sorted(Counter(label for r in records for label in r["labels"]).items())),
        "model_versions": dict(sorted(Counter(f"{r['model_name']}@{r['model_version']}" for r in records).items())),
        "reviewed_from": times[0] if times else None,
        "reviewed_to": times[-1] if times else None,
        "moderators": dict(sorted(Counter(m for r in records for m in r["moderators"]).items())),
        "multi_moderator_contents": len(multi),
        "moderator_agreement": (sum(r.unanimous for r in multi) / len(multi)) if multi else None,
        "disagreements": [
            {"content_hash": r.content_hash, "kept_as": r.decision,
             "votes": {v.moderator: v.decision for v in r.votes}} for r in resolution.disagreements],
        "retracted_reviews": resolution.retracted,
        "invalid_review_records": resolution.invalid,
        "skipped": sorted(skipped, key=lambda s: s["content_hash"]),
        "resolution_policy": RESOLUTION_POLICY,
        "sources": {"reviews_topic": sources.reviews_topic, "verdict_topic": sources.verdict_topic,
                    "input_topic": sources.input_topic},
    }


def fetch_policy_from_env() -> FetchPolicy:
    """The worker's fetch rules (MEMEGUARD_FILE_ROOT, allowed networks, size caps) from the same variables."""
    return FetchPolicy.from_settings(WorkerSettings())
