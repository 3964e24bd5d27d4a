"""The worker end to end on a real broker, a real redis-server and real worker processes."""

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from consumer.devinfra.stack import free_port
from schemas import DeadLetter, ErrorKind, Verdict
from tests.kafka_helpers import audit, committed_offsets, produce_events, produce_raw, wait_outputs
from tests.memes import SEMEVAL, dev_events, event, meme_bytes

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("engine", ["faust", "confluent"])
def test_n_events_in_n_verdicts_out_and_offsets_committed(stack, worker_factory, topics, engine):
    worker = worker_factory(MEMEGUARD_WORKER_ENGINE=engine).start()
    events = dev_events(40)
    last = produce_events(stack.bootstrap, topics.input, events)
    outputs = wait_outputs(stack.bootstrap, topics, {e.event_id for e in events})
    counts = audit(outputs, {e.event_id for e in events})
    assert all(isinstance(o, Verdict) for o in outputs), [o for o in outputs if isinstance(o, DeadLetter)][:3]
    assert max(counts.values()) == 1  # no restart, so no re-delivery either
    v = outputs[0]
    assert len(v.techniques) == 22 and v.model.name == "memeguard-tiny" and v.content_hash
    assert {"parse", "fetch", "infer", "total"} <= set(v.timings_ms)
    # Offsets advance only after the verdicts are acknowledged: wait for the commit interval to pass.
    expected = {p: off + 1 for p, off in last.items()}
    deadline = time.monotonic() + 20
    while committed_offsets(stack.bootstrap, topics.group, topics.input) != expected:
        assert time.monotonic() < deadline, committed_offsets(stack.bootstrap, topics.group, topics.input)
        time.sleep(0.5)
    assert worker.stop() == 0, worker.log()


def test_duplicate_content_is_inferred_once(stack, worker_factory, topics):
    worker_factory().start()
    image = base64.b64encode(meme_bytes(3)).decode()
    dupes = [event(f"dup-{i}", post_id=f"post-{i}", image_b64=image, text="Same  TEXT here") for i in range(6)]
    other = event("other", image_b64=image, text="different text")
    produce_events(stack.bootstrap, topics.input, dupes[:3])
    time.sleep(1.5)  # the second wave lands in a later batch and must be served from Redis
    produce_events(stack.bootstrap, topics.input, dupes[3:] + [other])
    outputs = wait_outputs(stack.bootstrap, topics, {e.event_id for e in dupes + [other]})
    by_id = {o.event_id: o for o in outputs}
    verdicts = [by_id[e.event_id] for e in dupes]
    assert sum(not v.cached for v in verdicts) == 1
    assert len({v.content_hash for v in verdicts}) == 1
    assert {tuple(t.score for t in v.techniques) for v in verdicts} == {tuple(t.score for t in verdicts[0].techniques)}
    assert [v.post_id for v in verdicts] == [f"post-{i}" for i in range(6)]
    assert not by_id["other"].cached and by_id["other"].content_hash != verdicts[0].content_hash


class _Images(BaseHTTPRequestHandler):
    payload = b""

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        if self.path == "/meme.png":
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.payload)))
            self.end_headers()
            self.wfile.write(self.payload)
        else:
            self.send_error(404)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def image_server():
    _Images.payload = meme_bytes(1)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _png(size: tuple[int, int], mode: str = "1") -> str:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_bad_input_goes_to_dead_letters_and_nothing_else_is_disturbed(stack, worker_factory, topics, image_server):
    worker_factory().start()
    good = dev_events(4, inline=True)
    bad = {
        "bad-schema": (json.dumps({"event_id": "bad-schema", "post_id": 7, "image_url": "x"}).encode(),
                       ErrorKind.SCHEMA_VIOLATION),
        "bad-missing": (event("bad-missing", image_url="file:///nonexistent/meme.png"), ErrorKind.FORBIDDEN_URL),
        "bad-missing-in-root": (event("bad-missing-in-root", image_url=(SEMEVAL / "images" / "nope.png").as_uri()),
                                ErrorKind.IMAGE_MISSING),
        "bad-undecodable": (event("bad-undecodable", image_b64=base64.b64encode(b"GIF89a but not").decode()),
                            ErrorKind.IMAGE_UNDECODABLE),
        "bad-too-large": (event("bad-too-large", image_b64=base64.b64encode(b"\0" * 2_500_000).decode()),
                          ErrorKind.IMAGE_TOO_LARGE),
        "bad-pixel-bomb": (event("bad-pixel-bomb", image_b64=_png((10_000, 10_000))), ErrorKind.PIXEL_BOMB),
        "bad-outside-root": (event("bad-outside-root", image_url="file:///etc/passwd"), ErrorKind.FORBIDDEN_URL),
        "bad-closed-port": (event("bad-closed-port", image_url=f"http://127.0.0.1:{free_port()}/m.png"),
                            ErrorKind.FETCH_FAILED),
        "bad-private": (event("bad-private", image_url="http://10.20.30.40/meme.png"), ErrorKind.FORBIDDEN_URL),
        "bad-404": (event("bad-404", image_url=f"{image_server}/missing.png"), ErrorKind.FETCH_FAILED),
        "bad-scheme": (event("bad-scheme", image_url="ftp://example.org/m.png"), ErrorKind.FORBIDDEN_URL),
    }
    http_ok = event("http-ok", image_url=f"{image_server}/meme.png")
    records = [(b"k-invalid-json", b"{this is not json")]
    for key, (payload, _) in bad.items():
        value = payload if isinstance(payload, bytes) else payload.model_dump_json().encode()
        records.append((key.encode(), value))
    records += [(e.post_id.encode(), e.model_dump_json().encode()) for e in good + [http_ok]]
    produce_raw(stack.bootstrap, topics.input, records)

    expected_ids = set(bad) | {e.event_id for e in good} | {"http-ok"}
    outputs = wait_outputs(stack.bootstrap, topics, expected_ids)
    letters = [o for o in outputs if isinstance(o, DeadLetter)]
    invalid_json = [d for d in letters if d.event_id is None]
    assert len(invalid_json) == 1 and invalid_json[0].error_kind == ErrorKind.INVALID_JSON
    assert invalid_json[0].original_value == b"{this is not json" and invalid_json[0].original_key == b"k-invalid-json"
    assert invalid_json[0].origin.topic == topics.input and invalid_json[0].origin.offset >= 0
    audit([o for o in outputs if o.event_id is not None], expected_ids)
    by_id = {o.event_id: o for o in outputs if o.event_id}
    for key, (_, kind) in bad.items():
        assert isinstance(by_id[key], DeadLetter), key
        assert by_id[key].error_kind == kind, (key, by_id[key].message)
        assert by_id[key].message and len(by_id[key].message) < 400
    for e in good + [http_ok]:
        assert isinstance(by_id[e.event_id], Verdict), by_id[e.event_id]


def test_redis_outage_degrades_to_no_cache_and_recovers(stack, worker_factory, topics):
    worker = worker_factory().start()
    first = dev_events(5)
    produce_events(stack.bootstrap, topics.input, first)
    wait_outputs(stack.bootstrap, topics, {e.event_id for e in first})
    stack.redis.stop()
    try:
        during = dev_events(5)  # same content, new ids: Redis is down, so nothing can come from the cache
        produce_events(stack.bootstrap, topics.input, during)
        outputs = wait_outputs(stack.bootstrap, topics, {e.event_id for e in during})
        by_id = {o.event_id: o for o in outputs}
        assert all(isinstance(by_id[e.event_id], Verdict) and not by_id[e.event_id].cached for e in during)
    finally:
        stack.redis.start()
    # Redis came back empty (no persistence): compute once, then the cache serves again.
    time.sleep(1.0)  # past MEMEGUARD_REDIS_RETRY_AFTER_S
    refill = dev_events(5)
    produce_events(stack.bootstrap, topics.input, refill)
    wait_outputs(stack.bootstrap, topics, {e.event_id for e in refill})
    after = dev_events(5)
    produce_events(stack.bootstrap, topics.input, after)
    outputs = wait_outputs(stack.bootstrap, topics, {e.event_id for e in after})
    by_id = {o.event_id: o for o in outputs}
    assert all(by_id[e.event_id].cached for e in after), worker.log()
    assert "serving without cache" in worker.log()


def test_worker_restart_mid_stream_loses_nothing(stack, worker_factory, topics):
    worker = worker_factory(MEMEGUARD_MAX_BATCH="4")
    worker.start()
    events = dev_events(63)
    produce_events(stack.bootstrap, topics.input, events)
    time.sleep(1.0)
    worker.stop(sig=9)  # hard kill mid-stream: un-committed work must be redone, not lost
    worker.start()
    outputs = wait_outputs(stack.bootstrap, topics, {e.event_id for e in events}, timeout_s=120)
    counts = audit(outputs, {e.event_id for e in events})
    scores: dict[str, set] = {}
    for o in outputs:
        scores.setdefault(o.event_id, set()).add(tuple(t.score for t in o.techniques))
    assert all(len(s) == 1 for s in scores.values()), "a re-processed event got different scores"
    assert sum(counts.values()) >= len(events)
    assert worker.stop() == 0


class _SlowImages(_Images):
    requested = threading.Event()

    def do_GET(self) -> None:  # noqa: N802
        self.requested.set()
        time.sleep(0.5)
        super().do_GET()


def test_sigterm_mid_batch_finishes_the_batch_and_loses_nothing(stack, worker_factory, topics):
    _SlowImages.payload = meme_bytes(2)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowImages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/meme.png"
        worker = worker_factory(MEMEGUARD_MAX_BATCH="8", MEMEGUARD_FETCH_TIMEOUT_S="10").start()
        events = [event(f"slow-{i}", image_url=url, text=f"text {i}") for i in range(24)]
        produce_events(stack.bootstrap, topics.input, events)
        assert _SlowImages.requested.wait(60), worker.log()  # a batch is now waiting on the slow server
        assert worker.stop(sig=15) == 0, worker.log()
        worker.start()
        outputs = wait_outputs(stack.bootstrap, topics, {e.event_id for e in events})
        audit(outputs, {e.event_id for e in events})
        assert all(isinstance(o, Verdict) for o in outputs), [o.message for o in outputs if isinstance(o, DeadLetter)][:3]
    finally:
        server.shutdown()


def test_hostile_text_and_ids_are_carried_through_without_breaking_json_or_logs(stack, worker_factory, topics):
    worker = worker_factory().start()
    nasty = "\u202eevil\u202c \x00\x07\x1b[31mred\x1b[0m \r\n\t \u2066iso\u2069 \ufeff\u200b" + '"}{\\'
    hostile_id = "ev-\u202e\n\x1b[2J\"quoted\"-1"
    long_text = (nasty * 400)[:10_000]  # exactly the schema's limit
    accepted = [event(hostile_id, text=nasty, author_id="\u202eauthor\n"), event("ev-long", text=long_text),
                event(hostile_id + "-dl", text=nasty, image_url="file:///etc/passwd")]
    over = json.dumps({**json.loads(event("ev-over").model_dump_json()), "text": "x" * 10_001}).encode()
    not_utf8 = b'{"event_id": "\xff\xfe", "post_id": "p"}'
    produce_raw(stack.bootstrap, topics.input, [(e.post_id.encode(), e.model_dump_json().encode()) for e in accepted]
                + [(b"over", over), (b"\xff-key", not_utf8)])

    outputs = wait_outputs(stack.bootstrap, topics, {hostile_id, hostile_id + "-dl", "ev-long", "ev-over"})
    by_id = {o.event_id: o for o in outputs}
    assert isinstance(by_id[hostile_id], Verdict) and by_id[hostile_id].post_id == hostile_id
    assert isinstance(by_id["ev-long"], Verdict)
    assert by_id["ev-over"].error_kind == ErrorKind.SCHEMA_VIOLATION and len(by_id["ev-over"].message) < 400
    assert by_id["ev-over"].original_value == over
    undecodable = [o for o in outputs if isinstance(o, DeadLetter) and o.original_key == b"\xff-key"]
    assert len(undecodable) == 1 and undecodable[0].error_kind == ErrorKind.INVALID_JSON
    assert undecodable[0].original_value == not_utf8
    assert worker.stop() == 0
    # One JSON object per log line, even with ids full of newlines, escapes and bidi overrides.
    lines = [line for line in worker.log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert all(isinstance(r, dict) for r in records)
    logged = [r for r in records if r.get("event_id") == hostile_id + "-dl"]
    assert len(logged) == 1 and logged[0]["error_kind"] == "forbidden_url", records[-5:]


@pytest.mark.parametrize("engine", ["faust", "confluent"])
def test_records_with_thousands_of_headers_are_moderated_by_their_value(stack, worker_factory, topics, engine):
    """Headers are not the event: 3,000 of them (~300 kB) on a valid event, and on a tombstone, change nothing."""
    from confluent_kafka import Producer

    worker = worker_factory(MEMEGUARD_WORKER_ENGINE=engine).start()
    good = event("hdr-good", text="meme under headers")
    headers = [(f"h{i}", b"x" * 100) for i in range(3000)]
    producer = Producer({"bootstrap.servers": stack.bootstrap, "acks": "all", "message.max.bytes": 16 * 1024 * 1024})
    producer.produce(topics.input, key=b"k", value=good.model_dump_json().encode(), headers=headers)
    producer.produce(topics.input, key=b"k", value=None, headers=headers)
    assert producer.flush(30) == 0
    after = event("hdr-after", text="the next record")
    produce_events(stack.bootstrap, topics.input, [after])
    outputs = wait_outputs(stack.bootstrap, topics, {"hdr-good", "hdr-after", None})
    kinds = sorted(("verdict" if isinstance(o, Verdict) else o.error_kind.value, o.event_id or "") for o in outputs)
    assert kinds == [("invalid_json", ""), ("verdict", "hdr-after"), ("verdict", "hdr-good")], kinds
    assert worker.stop() == 0, worker.log()
