"""One batch of raw records -> one outcome each (a verdict or a dead letter). Knows nothing of Faust.

Stages: parse/validate -> fetch image bytes -> content hash -> cache lookup -> decode -> (enrich) ->
one batched inference for the unique misses -> thresholds + policy -> cache store.

The fetcher and the decoder are handed in (consumer.core.seams: `Fetcher`, `Decoder`); the worker passes
`consumer.core.fetch.ImageFetcher` and `consumer.core.images.ImageDecoder`.
"""

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from PIL import Image
from pydantic import ValidationError

from consumer.core.cache import VerdictCache, cache_key
from consumer.core.hashing import content_hash
from consumer.core.policy import DecisionPolicy, harm_fields, serving_policy
from consumer.core.runtime import BundleRuntime
from consumer.core.seams import Decoder, Fetcher
from consumer.errors import InputError
from schemas import DeadLetter, ErrorKind, MemeEvent, Origin, TechniqueScore, Verdict

log = logging.getLogger(__name__)

# Every inference call runs on this one thread. glibc gives each thread that allocates its own malloc arena and
# keeps what is freed there: ONNX Runtime's activations (hundreds of MiB at batch 64, handed back after each
# call by the `bounded` memory mode) left a high-water mark in each of the default executor's threads that
# ran a call (measured: worker RSS 0.7-0.9 GiB, peak 1.5 GiB, over a soak; one thread: see docs/benchmarks.md).
# Batches reach inference one at a time anyway (the worker's pipelining keeps their order).
_INFERENCE_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memeguard-inference")


@dataclass(frozen=True)
class RawRecord:
    key: bytes | None
    value: bytes | None  # None: a tombstone (null value), dead-lettered as invalid_json
    topic: str
    partition: int
    offset: int


@dataclass
class Outcome:
    record: RawRecord
    verdict: Verdict | None = None
    dead_letter: DeadLetter | None = None
    event_time: datetime | None = None  # the event's created_at, for end-to-end latency metrics
    explain_input: tuple[Image.Image, str] | None = None  # set for fresh `review` verdicts when an explainer runs


@dataclass
class _Item:
    """Working state of one record while the batch moves through the stages."""

    record: RawRecord
    event: MemeEvent | None = None
    image_bytes: bytes = b""
    image: Image.Image | None = None
    text: str = ""
    hash: str = ""
    outcome: Outcome | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def dead_letter(record: RawRecord, kind: ErrorKind, message: str, event_id: str | None = None) -> DeadLetter:
    """DeadLetter makes `event_id` and `message` serialisable and bounded (schemas.text_safety)."""
    return DeadLetter(
        event_id=event_id, error_kind=kind, message=message,
        origin=Origin(topic=record.topic, partition=record.partition, offset=record.offset),
        original_key=record.key, original_value=record.value or b"",
    )


def peek_event_id(record: RawRecord) -> str | None:
    """The record's event_id if it is a JSON object carrying a string one; for dead letters that skip parsing."""
    try:
        payload = json.loads(record.value) if record.value else None
    except (ValueError, RecursionError):
        return None
    event_id = payload.get("event_id") if isinstance(payload, dict) else None
    return event_id if isinstance(event_id, str) else None


def last_resort_dead_letter(record: RawRecord, kind: ErrorKind, error: Exception) -> DeadLetter:
    """When even a dead letter cannot be built or serialised: nothing derived from the input but its bytes."""
    return DeadLetter(
        error_kind=kind, message=f"the dead letter for this record could not be serialised ({type(error).__name__}); "
                                 "only its original bytes and origin are kept",
        origin=Origin(topic=record.topic, partition=record.partition, offset=record.offset),
        original_key=record.key, original_value=record.value or b"",
    )


def _schema_message(e: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in err['loc']) or 'event'}: {err['msg']}" for err in e.errors()[:5]]
    return "event does not match MemeEvent: " + "; ".join(parts)


@dataclass
class PreparedBatch:
    """A batch between `prepare` and `finish`: which records already have an outcome, the cache hits, the
    unique misses (decoded) and the runtime they were looked up with (a hot reload between the two stages
    must not mix model versions)."""

    items: list[_Item]
    runtime: BundleRuntime
    pending: list[_Item] = field(default_factory=list)
    hits: dict[str, Verdict] = field(default_factory=dict)
    misses: dict[str, _Item] = field(default_factory=dict)
    first_of: dict[str, _Item] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    _last: float = 0.0

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round((now - (self._last or self.started)) * 1000, 3)
        self._last = now


class ModerationPipeline:
    def __init__(self, runtime: BundleRuntime, cache: VerdictCache, fetcher: Fetcher, decoder: Decoder,
                 policy: DecisionPolicy | None, max_event_bytes: int, max_image_pixels: int,
                 enricher: Callable[[Image.Image, str | None], Any] | None = None,
                 explainer: Callable[[Image.Image, str | None, str], Awaitable[Any]] | None = None,
                 cache_variant: str = "") -> None:
        self.runtime = runtime  # swapped between batches on hot reload
        self.cache = cache
        self.fetcher = fetcher
        self.decoder = decoder
        # A deployment's MEMEGUARD_POLICY_FILE; None serves the policy of the bundle in use (serving_policy).
        self.policy_override = policy
        self.max_event_bytes = max_event_bytes
        self.max_image_pixels = max_image_pixels
        self.enricher = enricher
        # Only for memes sent to review, and after the verdict is published (consumer.worker.explanations).
        self.explainer = explainer
        # Settings that change scores without changing the model (enrichment stages and options) are part of
        # the cache key; the decision policy is re-applied to every hit, so a policy change acts at once.
        self.cache_variant = cache_variant

    def _fail(self, item: _Item, kind: ErrorKind, message: str) -> None:
        event_id = item.event.event_id if item.event else None
        item.outcome = Outcome(item.record, dead_letter=dead_letter(item.record, kind, message, event_id))

    def _parse(self, item: _Item) -> None:
        value = item.record.value
        if value is None:
            return self._fail(item, ErrorKind.INVALID_JSON, "record value is null (a tombstone): no event to moderate")
        if len(value) > self.max_event_bytes:
            return self._fail(item, ErrorKind.OVERSIZED, f"record is {len(value)} bytes, over {self.max_event_bytes}")
        try:  # the fast path: pydantic-core parses and validates the bytes at once
            item.event = MemeEvent.model_validate_json(value)
            return
        except (ValueError, RecursionError):
            pass  # its JSON parser is stricter than json's: the path below classifies and words the error
        try:
            payload = json.loads(value)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, integers over Python's digit limit
            return self._fail(item, ErrorKind.INVALID_JSON, f"record value is not JSON: {e}")
        except RecursionError:
            return self._fail(item, ErrorKind.INVALID_JSON, "record value is JSON nested too deeply to parse")
        try:
            item.event = MemeEvent.model_validate(payload)
        except RecursionError:
            return self._fail(item, ErrorKind.SCHEMA_VIOLATION, "event is nested too deeply to validate")
        except ValidationError as e:
            event_id = payload.get("event_id") if isinstance(payload, dict) else None
            item.outcome = Outcome(item.record, dead_letter=dead_letter(
                item.record, ErrorKind.SCHEMA_VIOLATION, _schema_message(e),
                event_id if isinstance(event_id, str) else None))

    async def _fetch(self, items: list[_Item]) -> None:
        results = await self.fetcher.fetch_many([i.event for i in items])  # the whole batch at once
        for item, result in zip(items, results, strict=True):
            if isinstance(result, InputError):
                self._fail(item, result.kind, str(result))
            else:
                item.image_bytes = result

    async def _decode(self, items: list[_Item], runtime: BundleRuntime | None = None, tensors: bool = False) -> None:
        """Decode the batch's misses in bounded memory: at most `decode_concurrency` decodes and
        `batch_pixel_budget` decoded pixels at once (a batch over the budget decodes in waves; nothing is
        dropped for it). Images are decoded downscaled to what their readers need (consumer.core.images): the
        model's input side, or `enrichment_side` when enrichment or the explainer look at them too. With
        `tensors` (and neither of them), the decode threads go straight to the model's input tensors."""
        spec = (runtime or self.runtime).manifest.image
        target = spec.size if spec is not None else None
        pictures_needed = self.enricher is not None or self.explainer is not None
        if pictures_needed:
            target = max(target or 0, self.decoder.policy.enrichment_side)
        blobs = [i.image_bytes for i in items]
        if tensors and not pictures_needed and spec is not None:
            results = await self.decoder.decode_tensors(blobs, self.max_image_pixels, spec)
        else:
            results = await self.decoder.decode_many(blobs, self.max_image_pixels, target)
        for item, result in zip(items, results, strict=True):
            if isinstance(result, InputError):
                self._fail(item, result.kind, str(result))
            else:
                item.image = result

    async def process(self, records: list[RawRecord]) -> list[Outcome]:
        return await self.finish(await self.prepare(records))

    async def prepare(self, records: list[RawRecord]) -> PreparedBatch:
        """Everything before inference: parse, fetch, hash, cache lookup, decode (and enrichment). The
        worker runs this for the next batch while the current one is in inference (`finish`)."""
        batch = PreparedBatch(items=[_Item(r) for r in records], runtime=self.runtime)
        lap = batch.lap
        for item in batch.items:
            self._parse(item)
        lap("parse")
        pending = [i for i in batch.items if i.outcome is None]
        await self._fetch(pending)
        lap("fetch")

        pending = [i for i in pending if i.outcome is None]
        version = batch.runtime.version
        for i in pending:
            i.text = i.event.text or ""
            i.hash = content_hash(i.image_bytes, i.text)
        cached = await self.cache.get_many([cache_key(version, i.hash, self.cache_variant) for i in pending])
        lap("cache_get")

        batch.pending = pending
        for i, v in zip(pending, cached, strict=True):
            if v is not None and i.hash not in batch.hits:  # the policy once per distinct meme, not per event
                batch.hits[i.hash] = self._with_current_policy(v, batch.runtime)
        misses: dict[str, _Item] = {}
        for i in pending:
            if i.hash not in batch.hits:
                misses.setdefault(i.hash, i)  # duplicates inside the batch are computed once
            else:
                i.image_bytes = b""  # a hit needs no image: free it while the batch waits for inference
        await self._decode(list(misses.values()), batch.runtime, tensors=True)  # bounded; not a thread per image
        for i in misses.values():
            i.image_bytes = b""  # decoded (or failed): the encoded bytes are not needed any more
        lap("decode")
        batch.first_of = dict(misses)  # duplicates of a meme that failed to decode share its dead-letter kind
        batch.misses = {h: i for h, i in misses.items() if i.outcome is None}

        if self.enricher is not None and batch.misses:
            await asyncio.gather(*(self._enrich(i) for i in batch.misses.values()))
            lap("enrich")
        return batch

    async def finish(self, batch: PreparedBatch) -> list[Outcome]:
        """Inference for the prepared batch's unique misses, the cache store, one outcome per record."""
        timings, lap = batch.timings, batch.lap
        runtime = batch.runtime
        version = runtime.version
        computed = await self._infer(runtime, list(batch.misses.values()), timings, lap)
        await self.cache.put_many({cache_key(version, h, self.cache_variant): v for h, v in computed.items()})
        lap("cache_put")
        timings["total"] = round((time.perf_counter() - batch.started) * 1000, 3)
        now = datetime.now(UTC)
        hits, first_of = batch.hits, batch.first_of

        for i in batch.pending:
            if i.outcome is not None:
                continue
            first = first_of.get(i.hash)
            source = computed.get(i.hash) or hits.get(i.hash)
            if source is None:  # its first occurrence in this batch failed to decode or infer
                dl = first.outcome.dead_letter if first is not None and first.outcome else None
                kind = dl.error_kind if dl else ErrorKind.INFERENCE_FAILED
                self._fail(i, kind, dl.message if dl else "no verdict could be computed for this content")
                continue
            is_copy = first is not i
            fresh = not is_copy and i.hash in computed
            i.outcome = Outcome(i.record, verdict=source.model_copy(update={
                # Everything about this event is this event's, whoever computed the scores.
                "event_id": i.event.event_id, "post_id": i.event.post_id, "author_id": i.event.author_id,
                "cached": not fresh, "timings_ms": timings, "model": runtime.model_info,
                "created_at": now, "event_created_at": i.event.created_at,
            }), event_time=i.event.created_at)
            if fresh and self.explainer is not None and source.decision.value == "review":
                i.outcome.explain_input = (i.image, i.text)
        return [i.outcome for i in batch.items]

    def _with_current_policy(self, v: Verdict, runtime: BundleRuntime) -> Verdict:
        policy = serving_policy(runtime.manifest, self.policy_override)
        decision, reasons = policy.decide(v.techniques, v.harmful_score, v.severity_scores)
        return v.model_copy(update={"decision": decision, "reasons": reasons, "policy_id": policy.id})

    async def _enrich(self, item: _Item) -> None:
        enrichment = await asyncio.to_thread(self.enricher, item.image, item.event.text)
        item.extra["enrichment"] = enrichment
        if not item.text and enrichment.ocr is not None and enrichment.ocr.text:
            item.text = enrichment.ocr.text  # memes posted without text are scored on what OCR read

    async def _infer(self, runtime: BundleRuntime, items: list[_Item], timings: dict[str, float],
                     lap) -> dict[str, Verdict]:
        if not items:
            return {}
        try:
            prediction = await asyncio.get_running_loop().run_in_executor(
                _INFERENCE_THREAD, runtime.predict, [i.image for i in items], [i.text for i in items])
        except Exception as e:  # an ONNX Runtime failure must dead-letter the batch, not kill the worker
            log.exception("inference failed for a batch of %d", len(items))
            for i in items:
                self._fail(i, ErrorKind.INFERENCE_FAILED, f"inference failed: {type(e).__name__}: {e}")
            return {}
        lap("infer")
        labels = runtime.manifest.labels
        policy = serving_policy(runtime.manifest, self.policy_override)
        verdicts = {}
        for row, i in enumerate(items):
            probs = prediction.technique_probs[row]
            if not np.isfinite(probs).all():
                self._fail(i, ErrorKind.INFERENCE_FAILED, "the model produced non-finite scores for this meme")
                continue
            probs = np.clip(probs, 0.0, 1.0)
            techniques = [
                TechniqueScore(technique=name, score=float(p), threshold=float(th), flagged=bool(p >= th))
                for name, p, th in zip(labels, probs, runtime.thresholds, strict=True)
            ]
            harm = harm_fields(prediction, row)
            if harm is None:
                self._fail(i, ErrorKind.INFERENCE_FAILED, "the model produced non-finite harm scores for this meme")
                continue
            decision, reasons = policy.decide(techniques, harm["harmful_score"], harm["severity_scores"])
            verdicts[i.hash] = Verdict(
                event_id=i.event.event_id, post_id=i.event.post_id, author_id=i.event.author_id,
                content_hash=i.hash, model=runtime.model_info, techniques=techniques, **harm,
                decision=decision, reasons=reasons, policy_id=policy.id, timings_ms=dict(timings),
                **({"enrichment": i.extra["enrichment"]} if "enrichment" in i.extra else {}),
            )
        return verdicts
