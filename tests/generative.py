"""Hypothesis strategies for hostile input records: what an adversary with write access to the input
topic can send. Shared by the in-process property test and the real-worker one.

No strategy produces a public address: URLs carry only IP literals that the fetcher must block, loopback,
malformed hosts, or (in-process only, resolved by a fake resolver) names under `.test`.
"""

import base64
import io
import json
from datetime import UTC, datetime

from hypothesis import strategies as st
from PIL import Image

# Unicode and control characters that have broken real systems.
EDGE_STRINGS = [
    "\ud800", "\udfff", "a\udc80b", "\x00", "nul\x00inside", "\u202eevil\u202c", "\u200d", "\u2066x\u2069",
    "👨\u200d👩\u200d👧", "\x1b[31mred\x1b[0m", "line\r\nbreak", '"quoted"', "\\", "\ufeff", "\uffff", "\U0010ffff",
    "", " ", "A" * 201, "é" * 300, "null", "{}", "[]", "NaN", "-0", "1e999",
]
HOSTILE_URLS = [
    "http://[::1", "http://a..b/", "file:///x%00", "file:///etc/passwd", "file://evil.test/x", "file:",
    "file:///../../../etc/shadow", "file:///dev/zero", "file:///proc/self/environ", "file:///",
    "http://169.254.169.254/latest/meta-data/", "http://[::ffff:127.0.0.2]/", "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::a9fe:a9fe]/", "http://[2002:7f00:1::]/", "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
    "http://0.0.0.0/", "http://0/", "http://255.255.255.255/", "http://224.0.0.1/", "http://10.0.0.1/",
    "http://192.168.1.1/", "http://[fe80::1%25eth0]/", "http://[::]/", "http://127.0.0.2:0/",
    "http://127.0.0.2:99999/", "http://user:pw@127.0.0.2/", "gopher://127.0.0.2/", "javascript:alert(1)",
    "data:image/png;base64,AAAA", "ftp://127.0.0.2/x", "http://" + "a" * 300 + "/", "http://\u202e/",
    "http://xn--/", "http://-a-/", "http:///nohost", "http:", "://", "", " ", "\x00", "http://[::1]:80/%00",
    "https://[::1]:443/", "HTTP://127.0.0.2/", "http://127.1/", "http://0x7f000001/", "http://2130706433/",
]
SCHEMES = ["http", "https", "file", "ftp", "gopher", "HTTP", "", "data", "ws"]

hostile_text = st.one_of(
    st.sampled_from(EDGE_STRINGS),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40),  # includes lone surrogates
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), hostile_text)
json_docs = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)), max_leaves=16)
timestamps = st.one_of(
    st.datetimes().map(lambda d: d.isoformat()),  # naive
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),  # aware, any zone
    st.sampled_from(["2024-05-01T10:00:00", "2024-05-01T10:00:00Z", "2024-05-01T10:00:00+14:00",
                     "0001-01-01T00:00:00", "9999-12-31T23:59:59.999999", "not a time", "", "2024-02-30T00:00:00"]),
    st.integers(), st.floats(), st.none(),
)


def _urls(names: bool) -> st.SearchStrategy[str]:
    hosts = st.sampled_from(["127.0.0.2", "[::1]", "10.1.2.3", "169.254.169.254", "0.0.0.0", "[::ffff:10.0.0.1]"])
    if names:  # only where a fake resolver answers: a real lookup would leave the machine
        hosts = st.one_of(hosts, st.from_regex(r"\A[a-z0-9-]{1,12}\.test\Z"))
    built = st.builds(lambda s, h, p: f"{s}://{h}/{p}", st.sampled_from(SCHEMES), hosts, hostile_text)
    return st.one_of(st.sampled_from(HOSTILE_URLS), built)


def tiny_png(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


def valid_event(event_id: str, image_url: str | None) -> dict:
    doc = {"event_id": event_id, "post_id": f"post-{event_id}", "author_id": "author-1", "text": "a meme",
           "created_at": datetime(2024, 5, 1, 10, tzinfo=UTC).isoformat()}
    if image_url is None:
        doc["image_b64"] = base64.b64encode(tiny_png()).decode()
    else:
        doc["image_url"] = image_url
    return doc


WRONG_TYPES = st.one_of(st.integers(), st.floats(), st.booleans(), st.none(), st.lists(st.integers(), max_size=3),
                        st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))


def field_values(field: str, names: bool) -> st.SearchStrategy:
    specific = {
        "created_at": timestamps,
        "image_url": _urls(names),
        "image_b64": st.one_of(st.sampled_from(["", "!!!!", "AAAA", "=" * 8, base64.b64encode(b"GIF89a").decode()]),
                               st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()), hostile_text),
        "metadata": st.one_of(json_docs, st.integers(1, 3000).map(lambda n: json.loads("[" * n + "]" * n)
                                                                     if n < 900 else {"deep": n})),
        "labels": st.one_of(st.lists(hostile_text, max_size=3), WRONG_TYPES),
        "schema_version": st.sampled_from(["1.0", "1.9", "2.0", "", "x"]),
    }.get(field)
    return st.one_of(specific, hostile_text, WRONG_TYPES) if specific is not None else st.one_of(hostile_text, WRONG_TYPES)


FIELDS = ["event_id", "post_id", "author_id", "image_b64", "image_url", "text", "language", "created_at",
          "metadata", "labels", "schema_version", "kind", "unknown_field"]


@st.composite
def mutated_event(draw, event_id: str, image_url: str | None, names: bool) -> dict:
    doc = valid_event(event_id, image_url)
    for _ in range(draw(st.integers(0, 3))):
        field = draw(st.sampled_from(FIELDS))
        action = draw(st.sampled_from(["replace", "replace", "delete", "huge"]))
        if action == "delete":
            doc.pop(field, None)
        elif action == "huge":
            doc[field] = "x" * draw(st.sampled_from([201, 10_001, 200_000]))
        else:
            doc[field] = draw(field_values(field, names))
    return doc


def encode(draw, doc: object) -> bytes:
    """JSON text as a producer might write it: ASCII escapes, raw UTF-8, or CESU-style surrogates."""
    style = draw(st.sampled_from(["ascii", "utf8"]))
    text = json.dumps(doc, ensure_ascii=style == "ascii")
    return text.encode("utf-8", "surrogatepass")


@st.composite
def record_values(draw, n: int, names: bool, image_url: str | None) -> bytes | None:
    kind = draw(st.sampled_from(["valid", "url", "mutated", "mutated", "mutated", "json", "bytes", "null", "nested"]))
    if kind == "valid":
        return encode(draw, valid_event(f"ev-{n}", image_url))
    if kind == "url":  # a well-formed event whose only fault is where its image lives
        return encode(draw, valid_event(f"ev-{n}", draw(_urls(names))))
    if kind == "mutated":
        return encode(draw, draw(mutated_event(f"ev-{n}", image_url, names)))
    if kind == "json":
        return encode(draw, draw(json_docs))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "null":
        return None
    depth = draw(st.sampled_from([100, 2_000, 50_000]))
    return draw(st.sampled_from([b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth,
                                 b"[" * depth]))


keys = st.one_of(st.none(), st.binary(max_size=40))
headers = st.lists(st.tuples(hostile_text.map(lambda s: s.encode("utf-8", "surrogatepass").decode("utf-8", "replace")),
                             st.one_of(st.none(), st.binary(max_size=40))), max_size=3)
