"""`memeguard dataset build`: moderator reviews joined with their verdicts and events -> a SemEval-format dataset.

OUT/dataset.json   SemEval records (`id`, `text`, `image`, `labels`) plus what the review knew: `decision`
                   (block | allow), `content_hash`, `model_version`, `model_decision`, `scores`, `moderators`.
OUT/images/        one image per content hash, fetched through the worker's ImageFetcher (same SSRF and size
                   rules) and kept only when its bytes + text still hash to the reviewed content hash and it
                   decodes under the worker's bounds (formats, JPEG scan cap, pixel cap, decode deadline:
                   `DecodePolicy`), so `calibrate` and training never read a file the worker would refuse.
OUT/manifest.json  counts per label and decision, review time range, model versions, disagreements, skips,
                   and the review records that were not used (`review_records` counts per outcome,
                   `rejected_reviews` lists them by partition and offset, with the reason).

Only authentic reviews are used (consumer/learning/reviews.py): signed by the review page with
MEMEGUARD_REVIEW_SIGNING_KEY, a retraction only of the same moderator's review, labels only among the techniques
the reviewed verdict flagged. Verdict and input-event records are validated against their schemas; what does not
fit is skipped and counted (`invalid_verdict_records`, `invalid_event_records`), never stops the build.

Idempotent: records are sorted by content hash, images are named by it and written only when missing, and
nothing in the output depends on when the command ran, so re-running over the same topics rewrites the same bytes.
"""

import asyncio
import json
import logging
import os
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from consumer.core.fetch import FetchPolicy, ImageFetcher
from consumer.core.hashing import content_hash
from consumer.core.images import DecodePolicy, open_image
from consumer.errors import InputError
from consumer.kafka.topic_reader import read_topic
from consumer.learning.compare import parse_verdict
from consumer.learning.reviews import (
    FROM_SETTINGS,
    MAX_LISTED,
    Key,
    Resolution,
    Resolved,
    ReviewAuth,
    refuse_labels,
    resolve,
    verify,
)
from consumer.settings import WorkerSettings
from schemas import MemeEvent, Verdict
from schemas.review import ReviewMessage

log = logging.getLogger(__name__)

DATASET_FILE = "dataset.json"
MANIFEST_FILE = "manifest.json"
IMAGES_DIR = "images"
RESOLUTION_POLICY = ("only reviews signed by the review page; a retraction cancels the review it names, only the "
                     "same moderator's; labels only among the techniques the verdict flagged; each moderator's "
                     "latest standing review (broker timestamp) per content hash is their vote; the majority of "
                     "moderators is the label; ties are disagreements, recorded and left out")
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


def _skipped(kind: str, topic: str, bad: list) -> int:
    if bad:  # where, never what
        log.warning("%d records on %s do not fit the %s schema; skipped (first at partition %d offset %d)",
                    len(bad), topic, kind, bad[0].partition, bad[0].offset)
    return len(bad)


def _index_verdicts(records) -> tuple[dict[str, list[Verdict]], list]:
    out: dict[str, list[Verdict]] = {}
    bad = []
    for r in records:
        v = parse_verdict(r.value)
        if v is None:
            bad.append(r)
            continue
        out.setdefault(v.event_id, []).append(v)
    return out, bad


def _index_events(records) -> tuple[dict[str, MemeEvent], list]:
    out: dict[str, MemeEvent] = {}
    bad = []
    for r in records:
        try:
            e = MemeEvent.model_validate_json(r.value or b"")
        except (ValueError, RecursionError):  # ValidationError is a ValueError
            bad.append(r)
            continue
        out.setdefault(e.event_id, e)  # the first event of an id is the one the worker judged first
    return out, bad


def _candidates(review: ReviewMessage, verdicts: dict[str, list[Verdict]]) -> list[Verdict]:
    """The verdicts the moderator may have seen: same event and content, the model version the review names
    if any has it."""
    candidates = [v for v in verdicts.get(review.event_id, []) if v.content_hash == review.content_hash]
    return [v for v in candidates if v.model.version == review.model] or candidates


def _verdict_for(review: ReviewMessage, verdicts: dict[str, list[Verdict]]) -> Verdict | None:
    """The verdict the moderator saw (the latest candidate)."""
    pool = _candidates(review, verdicts)
    return max(pool, key=lambda v: v.created_at.timestamp()) if pool else None


def _labels_allowed(review: ReviewMessage, verdicts: dict[str, list[Verdict]]) -> bool | None:
    """Whether the review's labels and rejected labels are all techniques the verdict it reviewed flagged (the
    review page endorses or rejects exactly those); None when no verdict is there to check against."""
    pool = _candidates(review, verdicts)
    if not pool:
        return None
    named = {str(t) for t in (*review.labels, *review.rejected_labels)}
    return any(named <= {t.technique for t in v.flagged} for v in pool)


def _image_name(data: bytes, h: str, policy: DecodePolicy, max_pixels: int) -> str:
    """The image's file name, once it decoded (in full) under the worker's bounds; InputError otherwise."""
    prepared = open_image(data, max_pixels, formats=policy.formats, max_scans=policy.max_scans,
                          deadline_ms=policy.deadline_ms)
    ext = _EXT.get(prepared.format or "", "img")
    prepared.decode()
    return f"{h[:32]}.{ext}"


def _severity(decision: str, moderator_says: str | None) -> str:
    """An allowed meme is not harmful; a blocked one as harmful as its moderator said (somewhat, if unsaid)."""
    if decision != "block":
        return "not harmful"
    return moderator_says if moderator_says in ("somewhat harmful", "very harmful") else "somewhat harmful"


def _record(res: Resolved, verdict: Verdict, event: MemeEvent, image: str) -> dict[str, Any]:
    """The one place a dataset record is built, from the verified review (`res.latest`), the verdict it reviewed
    and the input event: a field from another source (e.g. the moderator's harm verdict) is added here."""
    review = res.latest
    assert review is not None  # only labelled resolutions become records
    flagged = {t.technique for t in verdict.flagged}
    return {
        "id": res.content_hash[:32],
        "text": event.text or "",
        "image": image,
        # Confirmed reviews endorse the techniques the model flagged; an overturned meme has none. Only names
        # the verdict flagged (already checked: refuse_labels), intersected again so no other name gets in.
        "labels": sorted(str(t) for t in review.labels if t in flagged) if res.decision == "block" else [],
        "rejected_labels": sorted(str(t) for t in review.rejected_labels if t in flagged),
        "decision": res.decision,
        "content_hash": res.content_hash,
        "event_id": review.event_id,
        "post_id": review.post_id,
        "model_version": verdict.model.version,
        "model_name": verdict.model.name,
        "model_decision": verdict.decision.value,
        "scores": {t.technique: t.score for t in verdict.techniques},
        "harmful_score": verdict.harmful_score,
        # The harm label for the harm head (`train --extra-data`) and for `calibrate`: the moderator's own
        # severity when the signed review has one, else what the decision implies.
        "severity": _severity(res.decision, review.severity),
        "severity_from": "moderator" if review.severity and res.decision == "block" else "decision",
        "moderators": {v.moderator: v.decision for v in res.votes},
        # the signed review times (UTC), never a time the record carried outside its signature
        "reviewed_at": max(v.message.reviewed_at for v in res.votes).isoformat(),
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
                  progress: bool = True, review_key: Key = FROM_SETTINGS,
                  max_image_pixels: int | None = None) -> dict[str, Any]:
    """Read the three topics, verify the reviews, resolve decisions, fetch images, write OUT; returns the
    manifest. `review_key`: the review page's signing key (default MEMEGUARD_REVIEW_SIGNING_KEY);
    `max_image_pixels`: the pixel cap images are decoded under (default MEMEGUARD_MAX_IMAGE_PIXELS)."""
    max_pixels = max_image_pixels or WorkerSettings().max_image_pixels
    auth = ReviewAuth.of(bootstrap, review_key)
    if auth.key is None:
        log.warning("MEMEGUARD_REVIEW_SIGNING_KEY is not set: %s", "unsigned reviews are used (loopback development "
                    "broker)" if auth.allow_unsigned else "no review is used (set the review page's key)")
    checked = verify(read_topic(bootstrap, sources.reviews_topic), sources.reviews_topic, auth)
    wanted = {s.message.event_id for s in checked.reviews}
    keep = lambda record: _event_id(record.value) in wanted  # noqa: E731 (only the reviewed events are kept)
    verdicts, bad_verdicts = _index_verdicts(read_topic(bootstrap, sources.verdict_topic, keep=keep))
    events, bad_events = _index_events(read_topic(bootstrap, sources.input_topic, keep=keep))
    refuse_labels(checked, lambda m: _labels_allowed(m, verdicts), sources.reviews_topic)
    resolution: Resolution = resolve(checked)
    invalid = {"invalid_verdict_records": _skipped("verdict", sources.verdict_topic, bad_verdicts),
               "invalid_event_records": _skipped("input event", sources.input_topic, bad_events)}
    skipped: list[dict[str, str]] = []
    jobs: list[tuple[Resolved, Verdict, MemeEvent]] = []
    for res in resolution.labelled:
        review = res.latest
        assert review is not None
        verdict, event = _verdict_for(review, verdicts), events.get(review.event_id)
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
        try:
            name = _image_name(data, res.content_hash, fetch_policy.decode, max_pixels)
        except InputError as e:
            skipped.append({"content_hash": res.content_hash, "reason": f"image refused ({e.kind.value}): {e}"})
            continue
        write_atomic(out_dir / IMAGES_DIR / name, data)
        records.append(_record(res, verdict, event, name))
    records.sort(key=lambda r: r["content_hash"])
    manifest = dataset_manifest(records, resolution, skipped, sources) | invalid
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
        # every review record that was not used, and why (consumer/learning/reviews.py)
        "review_records": dict(sorted(resolution.checked.counts.items())),
        "rejected_reviews": [r.listed() for r in sorted(resolution.checked.rejected,
                                                        key=lambda r: (r.partition, r.offset))][:MAX_LISTED],
        "skipped": sorted(skipped, key=lambda s: s["content_hash"]),
        "resolution_policy": RESOLUTION_POLICY,
        "sources": {"reviews_topic": sources.reviews_topic, "verdict_topic": sources.verdict_topic,
                    "input_topic": sources.input_topic},
    }


def fetch_policy_from_env() -> FetchPolicy:
    """The worker's fetch rules (MEMEGUARD_FILE_ROOT, allowed networks, size caps) from the same variables."""
    return FetchPolicy.from_settings(WorkerSettings())
