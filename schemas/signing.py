"""HMAC-signed JSON records (control commands, moderator reviews): the bytes signed, the signature, its check.

A record is a JSON object with one extra member, `signature`: HMAC-SHA256 over a context tag (which kind of
record), the topic's name and the object's canonical JSON (sorted keys, no spaces, ASCII). Binding the topic
means a signature lifted from one topic does not verify on another; the context, that a review does not verify
as a command.
"""

import hashlib
import hmac
import json
import re
from typing import Any

SIGNATURE = "signature"  # the record's JSON member that carries the HMAC (not part of what is signed)
_HEX64 = re.compile(r"[0-9a-f]{64}")


def canonical(doc: dict[str, Any]) -> bytes:
    """The bytes that are signed: sorted keys, no spaces, ASCII only (NaN or infinity: ValueError)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def sign(key: bytes, context: bytes, topic: str, doc: dict[str, Any]) -> str:
    """HMAC-SHA256 of `doc` (without its signature) bound to `context` and the topic it is published on."""
    message = context + b"\0" + topic.encode("utf-8", "surrogatepass") + b"\0" + canonical(doc)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def signature_refusal(doc: dict[str, Any], key: bytes | None, allow_unsigned: bool, context: bytes,
                      topic: str) -> str | None:
    """Pop `doc`'s signature and check it: None when the document may be used, else why not (`unsigned` /
    `bad_signature`). Without a key, unsigned documents are used only where `allow_unsigned` says so."""
    signature = doc.pop(SIGNATURE, None)
    if key is None:
        return None if allow_unsigned else "unsigned"
    if signature is None:
        return "unsigned"
    try:
        expected = sign(key, context, topic, doc)
    except (ValueError, RecursionError, TypeError):  # NaN, infinity, odd keys: never produced by a signer
        return "bad_signature"
    if not (isinstance(signature, str) and _HEX64.fullmatch(signature) and hmac.compare_digest(signature, expected)):
        return "bad_signature"
    return None
