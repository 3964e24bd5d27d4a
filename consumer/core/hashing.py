"""Content hash used for de-duplication: same image bytes + same normalised text = same meme."""

import hashlib
import unicodedata


def normalise_text(text: str | None) -> str:
    return " ".join(unicodedata.normalize("NFKC", text or "").casefold().split())


def content_hash(image_bytes: bytes, text: str | None) -> str:
    h = hashlib.sha256()
    h.update(hashlib.sha256(image_bytes).digest())
    h.update(normalise_text(text).encode("utf-8"))
    return h.hexdigest()
