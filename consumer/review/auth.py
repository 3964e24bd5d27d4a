"""Who is deciding: authentication and CSRF tokens for the review page (stdlib only: hashlib.scrypt, hmac, secrets).

Three ways in, from settings (see docs/operations.md):
- **password**: `MEMEGUARD_REVIEW_USERS` / `MEMEGUARD_REVIEW_USERS_FILE`, a JSON map user → scrypt hash made by
  `python -m consumer.review.auth hash-password`. The browser signs in on `/login` and gets a signed session
  cookie; scripts may send HTTP basic credentials instead.
- **proxy**: `MEMEGUARD_REVIEW_TRUSTED_HEADER` (e.g. `X-Forwarded-User`) set by an authenticating reverse proxy.
- **none**: `MEMEGUARD_REVIEW_DEV_NO_AUTH=true`, development only; decisions are recorded as `dev-unauthenticated`.

CSRF: every state-changing POST carries a token = HMAC(secret, csrf-cookie value | user) in a hidden field
(or the `X-CSRF-Token` header), compared with `hmac.compare_digest`; the cookie is random, HttpOnly and
SameSite=Strict, and a browser's `Sec-Fetch-Site: cross-site` / `same-site` is refused outright.
"""

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SESSION_COOKIE = "memeguard_review_session"
CSRF_COOKIE = "memeguard_review_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
DEV_MODERATOR = "dev-unauthenticated"
MAX_USER_CHARS = 100
# scrypt cost for new hashes: N=2^15, r=8, p=1 (32 MiB, ~0.1 s); stored hashes carry their own parameters.
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_DKLEN = 2**15, 8, 1, 32

AuthKind = Literal["password", "proxy", "none"]


@dataclass(frozen=True)
class Moderator:
    name: str
    auth: AuthKind  # recorded in every review message as `moderator_auth`


def valid_user_name(name: str) -> bool:
    return 0 < len(name) <= MAX_USER_CHARS and name == name.strip() and ":" not in name and name.isprintable()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """`scrypt$N$r$p$salt$key` (salt and key urlsafe base64)."""
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_maxmem(n, r, p), dklen=SCRYPT_DKLEN)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(key)}"


def _maxmem(n: int, r: int, p: int) -> int:
    return 128 * r * (n + p + 2) + 1024 * 1024


def parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """Raises ValueError unless `stored` is a scrypt hash this module made (a plain password is refused)."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a scrypt hash (make one with `python -m consumer.review.auth hash-password`)")
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, binascii.Error) as e:
        raise ValueError("malformed scrypt hash") from e
    if n < 2**14 or n > 2**20 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16 or len(salt) < 16 or len(key) < 16:
        raise ValueError("scrypt hash parameters out of range (N a power of two in 2^14..2^20, r<=32, p<=16)")
    return n, r, p, salt, key


def verify_password(password: str, stored: str) -> bool:
    n, r, p, salt, key = parse_hash(stored)
    got = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_maxmem(n, r, p), dklen=len(key))
    return hmac.compare_digest(got, key)


def load_users(users: dict[str, str], users_file: Path | None) -> dict[str, str]:
    """The settings' inline map merged with the file's (the file wins); every name and hash is checked."""
    merged = dict(users)
    if users_file is not None:
        try:
            data = json.loads(Path(users_file).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read the review users file {users_file}: {e}") from e
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(f"{users_file} must hold a JSON object of user name → scrypt hash")
        merged.update(data)
    for name, stored in merged.items():
        if not valid_user_name(name):
            raise ValueError(f"review user name {name!r} is empty, too long, padded or contains ':' or control characters")
        try:
            parse_hash(stored)
        except ValueError as e:
            raise ValueError(f"review user {name!r}: {e}") from e
    return merged


class Authenticator:
    """Checks credentials, signs session cookies and CSRF tokens. `secret` keys both HMACs."""

    def __init__(self, users: dict[str, str], trusted_header: str | None, dev_no_auth: bool, secret: bytes,
                 session_ttl_s: int) -> None:
        self.users = users
        self.trusted_header = trusted_header.lower() if trusted_header else None
        self.dev_no_auth = dev_no_auth and not users and not trusted_header
        self.secret = secret
        self.session_ttl_s = session_ttl_s
        self._dummy_hash = hash_password(secrets.token_urlsafe(16))  # unknown users cost the same as known ones
        self._verified: dict[bytes, float] = {}  # HMAC(secret, user, password, hash) → expiry: basic auth per request

    @property
    def passwords(self) -> bool:
        return bool(self.users)

    def check_password(self, user: str, password: str) -> bool:
        """Blocking (scrypt): call it off the event loop."""
        stored = self.users.get(user)
        if stored is None:
            verify_password(password, self._dummy_hash)
            return False
        memo = hmac.new(self.secret, b"\0".join([b"pw", user.encode(), password.encode(), stored.encode()]),
                        hashlib.sha256).digest()
        now = time.monotonic()
        if self._verified.get(memo, 0.0) > now:
            return True
        if not verify_password(password, stored):
            return False
        if len(self._verified) > 10_000:
            self._verified.clear()
        self._verified[memo] = now + 300
        return True

    # Session cookie: b64(json{u, iat, sid}) "." b64(HMAC(secret, payload | the user's stored hash)), so a
    # changed password or a removed user ends every session of that user.
    def make_session(self, user: str) -> str:
        payload = _b64(json.dumps({"u": user, "iat": int(time.time()), "sid": secrets.token_urlsafe(16)}).encode())
        return f"{payload}.{self._session_sig(payload, self.users[user])}"

    def _session_sig(self, payload: str, stored: str) -> str:
        return _b64(hmac.new(self.secret, f"session|{payload}|{stored}".encode(), hashlib.sha256).digest())

    def session_user(self, cookie: str | None) -> str | None:
        if not cookie or cookie.count(".") != 1 or len(cookie) > 1000:
            return None
        payload, sig = cookie.split(".")
        try:
            data = json.loads(_unb64(payload))
            user, issued = data["u"], int(data["iat"])
        except (ValueError, binascii.Error, KeyError, TypeError):
            return None
        stored = self.users.get(user) if isinstance(user, str) else None
        if stored is None or not hmac.compare_digest(sig, self._session_sig(payload, stored)):
            return None
        if not 0 <= time.time() - issued <= self.session_ttl_s:
            return None
        return user

    def proxy_user(self, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        return value if valid_user_name(value) else None

    # CSRF: a random HttpOnly cookie per browser; the token binds it to the user, so a token leaked for one
    # user (or the anonymous login form) is useless for another.
    @staticmethod
    def new_csrf_seed() -> str:
        return secrets.token_urlsafe(24)

    def csrf_token(self, seed: str, user: str) -> str:
        return _b64(hmac.new(self.secret, f"csrf|{seed}|{user}".encode(), hashlib.sha256).digest())

    def csrf_ok(self, seed: str | None, user: str, token: str | None) -> bool:
        if not seed or not token:
            return False
        return hmac.compare_digest(token.encode(), self.csrf_token(seed, user).encode())


def main(argv: list[str] | None = None) -> int:
    """`python -m consumer.review.auth hash-password [USER]`: prints a hash (or a `{"USER": hash}` entry)."""
    import getpass

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "hash-password" or len(argv) > 2:
        print("usage: python -m consumer.review.auth hash-password [USER]  (password from the terminal or stdin)",
              file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        print("use at least 8 characters", file=sys.stderr)
        return 1
    hashed = hash_password(password)
    print(json.dumps({argv[1]: hashed}) if len(argv) == 2 else hashed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
