"""Who is deciding: authentication and CSRF tokens for the review page (stdlib only: hashlib.scrypt, hmac, secrets).

Three ways in, from settings (see docs/operations.md):
- **password**: `MEMEGUARD_REVIEW_USERS` / `MEMEGUARD_REVIEW_USERS_FILE`, a JSON map user → scrypt hash made by
  `python -m consumer.review.auth hash-password`. The browser signs in on `/login` and gets a signed session
  cookie; scripts may send HTTP basic credentials instead.
- **proxy**: `MEMEGUARD_REVIEW_TRUSTED_HEADER` (e.g. `X-Forwarded-User`) set by an authenticating reverse proxy,
  believed only on connections from `MEMEGUARD_REVIEW_TRUSTED_PROXIES`, and never together with passwords (a
  client could otherwise skip the password by sending the header).
- **none**: `MEMEGUARD_REVIEW_DEV_NO_AUTH=true`, development only; decisions are recorded as `dev-unauthenticated`.

CSRF: every state-changing POST carries a token = HMAC(secret, csrf-cookie value | user) in a hidden field
(or the `X-CSRF-Token` header), compared with `hmac.compare_digest`; the cookie is random, HttpOnly and
SameSite=Strict, and a browser's `Sec-Fetch-Site: cross-site` / `same-site` is refused outright.

Password guessing: `LoginThrottle` answers 429 without running scrypt once an address or a user name failed too
often, and `PasswordChecks` runs at most `MEMEGUARD_REVIEW_PASSWORD_CHECKS` scrypt checks at once.
"""

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import secrets
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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

TRUSTED_HEADER_WITH_PASSWORDS = (
    "MEMEGUARD_REVIEW_TRUSTED_HEADER cannot be combined with review users (MEMEGUARD_REVIEW_USERS or "
    "MEMEGUARD_REVIEW_USERS_FILE), because anyone could skip the password by sending the header: use one of them")
MAX_THROTTLE_KEYS = 20_000  # addresses / user names remembered per table (~2 MB); the oldest go first

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
                 session_ttl_s: int, trusted_proxies: list[str] | None = None) -> None:
        if users and trusted_header:
            raise ValueError(TRUSTED_HEADER_WITH_PASSWORDS)
        self.users = users
        self.trusted_header = trusted_header.lower() if trusted_header else None
        self.trusted_proxies = [ipaddress.ip_network(p, strict=False)
                                for p in (["127.0.0.1", "::1"] if trusted_proxies is None else trusted_proxies)]
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
    # changed password or a removed user ends every session of that user. The signature only proves the page
    # issued it; the page also keeps each live `sid` in Redis, so logout ends it for every copy of the cookie.
    def make_session(self, user: str) -> tuple[str, str]:
        """(cookie, sid)."""
        sid = secrets.token_urlsafe(16)
        payload = _b64(json.dumps({"u": user, "iat": int(time.time()), "sid": sid}).encode())
        return f"{payload}.{self._session_sig(payload, self.users[user])}", sid

    def _session_sig(self, payload: str, stored: str) -> str:
        return _b64(hmac.new(self.secret, f"session|{payload}|{stored}".encode(), hashlib.sha256).digest())

    def session(self, cookie: str | None) -> tuple[str, str] | None:
        """(user, sid) of a cookie this page signed and that has not expired; whether it is still live is the
        store's to say (`ReviewStore.session_live`)."""
        if not cookie or cookie.count(".") != 1 or len(cookie) > 1000:
            return None
        payload, sig = cookie.split(".")
        try:
            data = json.loads(_unb64(payload))
            user, issued, sid = data["u"], int(data["iat"]), data["sid"]
        except (ValueError, binascii.Error, KeyError, TypeError):
            return None
        stored = self.users.get(user) if isinstance(user, str) else None
        if stored is None or not isinstance(sid, str) or not hmac.compare_digest(sig, self._session_sig(payload, stored)):
            return None
        if not 0 <= time.time() - issued <= self.session_ttl_s:
            return None
        return user, sid

    def from_proxy(self, client_host: str | None) -> bool:
        """Whether the connection comes from a configured proxy: the header is only believed from there (anyone
        else who can reach the port could send it)."""
        try:
            address = ipaddress.ip_address(client_host or "")
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # an IPv4 peer of a dual-stack listener ("::ffff:127.0.0.1")
        return any(address in net for net in self.trusted_proxies)

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


class LoginThrottle:
    """Failed password checks counted per client address and per user name in a fixed window from the first
    failure; over the limit, `retry_after` says how long to refuse (429) *before* any scrypt runs, right
    password or not, so a guesser learns nothing and costs nothing. A success clears its user name's count
    (not its address's: one valid account must not reset a guesser's address). Per process, in memory: no
    Redis key per attacker-chosen name, each table bounded (the oldest entries go first). Event-loop only."""

    def __init__(self, per_user: int, per_address: int, window_s: float, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = MAX_THROTTLE_KEYS) -> None:
        self.limits = {"user": per_user, "address": per_address}
        self.window_s = window_s
        self.clock = clock
        self.max_keys = max_keys
        self._failures: dict[str, OrderedDict[str, tuple[int, float]]] = {"user": OrderedDict(),
                                                                           "address": OrderedDict()}

    @staticmethod
    def _keys(address: str | None, user: str) -> dict[str, str]:
        return {"address": address or "unknown", "user": user[: MAX_USER_CHARS + 1]}

    def retry_after(self, address: str | None, user: str) -> tuple[str, float] | None:
        """(which limit, seconds left) when this address or user name is over its limit; None when a check may run."""
        now = self.clock()
        for kind, key in self._keys(address, user).items():
            count, since = self._failures[kind].get(key, (0, now))
            if count >= self.limits[kind] and now - since < self.window_s:
                return kind, self.window_s - (now - since)
        return None

    def failed(self, address: str | None, user: str) -> None:
        now = self.clock()
        for kind, key in self._keys(address, user).items():
            table = self._failures[kind]
            count, since = table.pop(key, (0, now))
            table[key] = (count + 1, since) if now - since < self.window_s else (1, now)
            while len(table) > self.max_keys:
                table.popitem(last=False)

    def succeeded(self, user: str) -> None:
        self._failures["user"].pop(user[: MAX_USER_CHARS + 1], None)


class Busy(Exception):
    """More password checks are running and waiting than `PasswordChecks` admits: answer 503, try again soon."""


class PasswordChecks:
    """At most `running` scrypt checks at once, on threads of their own, and at most 4x as many waiting; past that
    `check` raises `Busy` at once. scrypt costs a core and 32 MiB per check: a flood must neither queue without
    bound nor take the default executor's threads, the ones the page's decisions publish from."""

    def __init__(self, auth: "Authenticator", running: int) -> None:
        self.auth = auth
        self.limit = running * 5
        self._pool = ThreadPoolExecutor(running, thread_name_prefix="review-scrypt")
        self._lock = threading.Lock()  # requests may come from more than one event loop (test clients)
        self._admitted = 0

    async def check(self, user: str, password: str) -> bool:
        with self._lock:
            if self._admitted >= self.limit:
                raise Busy()
            self._admitted += 1
        try:
            return await asyncio.wrap_future(self._pool.submit(self.auth.check_password, user, password))
        finally:
            with self._lock:
                self._admitted -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


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
