"""Input-derived text that goes into an output must always serialise and stay small.

A JSON string from an adversary may hold lone surrogates (valid in Python `str`, not in UTF-8), NUL and
control characters, or megabytes. Output schemas run every copied string through `safe_text`.
"""

MAX_ID_CHARS = 200
MAX_MESSAGE_CHARS = 2_000


def is_valid_unicode(s: str) -> bool:
    """False for strings with lone surrogates: they cannot be encoded as UTF-8, so never serialise."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def safe_text(s: str, limit: int) -> str:
    """Lone surrogates become their `\\udXXX` escape text; the result is cut to `limit` characters."""
    if not is_valid_unicode(s):
        s = s.encode("utf-8", "backslashreplace").decode("utf-8")
    return s if len(s) <= limit else s[: limit - 1] + "…"
