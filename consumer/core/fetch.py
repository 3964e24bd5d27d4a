"""Load an event's image bytes: inline base64, file:// under an allowed root, or http(s)://.

An event must not make the worker read arbitrary files or reach internal services, so every reference
is checked before any I/O: scheme allow-list, URL and host-name syntax, path confinement, a size cap while
streaming, a total time limit, a redirect limit, and on every redirect hop:

- **Resolve once, check every address, connect to a checked address.** The host is resolved by the
  (injectable) resolver exactly once per hop; every address must be public or inside
  `fetch_allowed_networks`; the connection is then opened to one of exactly those addresses by a network
  backend that never resolves a name (`_PinnedBackend`), so a zero-TTL DNS answer cannot point a second
  lookup at loopback or a metadata service. The URL keeps its host name, so the Host header, TLS SNI and
  certificate verification are those of the name, as without pinning.
- **Blocked**: loopback, private, link-local, multicast, broadcast, reserved, unspecified, `0.0.0.0/8`,
  shared address space, site-local, and the IPv6 ranges that embed or tunnel to IPv4 (NAT64 `64:ff9b::/96`
  and `64:ff9b:1::/48`, 6to4 `2002::/16`, Teredo `2001::/32`); an IPv4-mapped address (`::ffff:a.b.c.d`)
  is judged by its IPv4 address.

`fetch` is total: whatever a user-controlled reference makes the parser, resolver, socket, TLS or HTTP
layer raise becomes an InputError of its kind (`forbidden_url`, `fetch_failed`, `image_missing`, ...).
"""

import asyncio
import base64
import binascii
import contextvars
import ipaddress
import os
import re
import socket
import ssl
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlsplit

import httpcore
import httpx

from consumer.core.images import DecodePolicy
from consumer.core.settings_groups import FetchSettingsGroup
from consumer.errors import InputError
from schemas import ErrorKind, MemeEvent

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""(host name, port) -> the addresses to try, as strings; raise socket.gaierror when the name does not resolve."""


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         proto=socket.IPPROTO_TCP)
    return [info[4][0] for info in infos]


@dataclass(frozen=True)
class FetchPolicy:
    allowed_schemes: frozenset[str]
    file_root: Path
    max_bytes: int
    timeout_s: float
    max_redirects: int
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    concurrency: int = 16  # file and http(s) fetches at once, per fetcher
    decode: DecodePolicy = field(default_factory=DecodePolicy)  # used by the pipeline's decode stage

    @classmethod
    def from_settings(cls, s: FetchSettingsGroup) -> "FetchPolicy":
        return cls(
            allowed_schemes=frozenset(s.fetch_allowed_schemes),
            file_root=Path(s.file_root).resolve(),
            max_bytes=s.max_image_bytes,
            timeout_s=s.fetch_timeout_s,
            max_redirects=s.fetch_max_redirects,
            allowed_networks=tuple(ipaddress.ip_network(n, strict=False) for n in s.fetch_allowed_networks),
            concurrency=s.fetch_concurrency,
            decode=DecodePolicy.from_settings(s),
        )


_TUNNELS = tuple((ipaddress.ip_network(net), name) for net, name in (
    ("64:ff9b::/96", "NAT64"), ("64:ff9b:1::/48", "local NAT64"), ("2002::/16", "6to4"), ("2001::/32", "Teredo"),
))
_BLOCKED_V4 = tuple((ipaddress.ip_network(net), name) for net, name in (
    ("0.0.0.0/8", "'this network'"), ("255.255.255.255/32", "broadcast"), ("100.64.0.0/10", "shared (CGNAT)"),
))


def blocked_reason(ip: IPAddress, allowed: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()) -> str | None:
    """Why fetching from `ip` is refused, or None when it is public (or allow-listed)."""
    if any(ip.version == net.version and ip in net for net in allowed):
        return None
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            inner = blocked_reason(ip.ipv4_mapped, allowed)
            return f"IPv4-mapped {inner}" if inner else None
        for net, name in _TUNNELS:
            if ip in net:
                return f"a {name} address (it tunnels to IPv4)"
        if ip.is_site_local:
            return "site-local"
    else:
        for net, name in _BLOCKED_V4:
            if ip in net:
                return name
    for attr in ("is_unspecified", "is_loopback", "is_link_local", "is_multicast", "is_private", "is_reserved"):
        if getattr(ip, attr):
            return attr[3:].replace("_", "-")
    return None if ip.is_global else "not globally routable"


# The checked addresses of the hop in flight, per task: {(host, port): (address, ...)}.
_PINNED: contextvars.ContextVar[dict[tuple[str, int], tuple[str, ...]] | None] = contextvars.ContextVar(
    "memeguard_pinned_addresses", default=None)


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to the addresses the fetcher checked for this host; never resolves a name itself."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options=None) -> httpcore.AsyncNetworkStream:
        addresses = (_PINNED.get() or {}).get((host, port))
        if not addresses:
            raise httpcore.ConnectError(f"no checked address for {host}:{port}; refusing to resolve it here")
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                     socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                error = e
        raise error

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        raise httpcore.ConnectError("unix sockets are never used for images")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
_REDIRECTS = {301, 302, 303, 307, 308}


def _file_type(mode: int) -> str:
    """What a non-regular file is, for a message."""
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return f"a special file (mode {stat.filemode(mode)})"


def _show(text: str, limit: int = 200) -> str:
    """A user-supplied string for a message: repr (so any code point is printable) and bounded."""
    return repr(text[:limit]) + ("…" if len(text) > limit else "")


@dataclass(frozen=True)
class _Hop:
    url: httpx.URL
    host: str  # ASCII (IDNA) host name or address literal, lower case, no brackets
    port: int
    literal: IPAddress | None


class ImageFetcher:
    def __init__(self, policy: FetchPolicy, resolver: Resolver | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.policy = policy
        self.resolver = resolver or system_resolver
        self._root_prefix = os.path.join(str(policy.file_root), "")  # with its trailing separator
        self._ssl_context = ssl_context or httpx.create_ssl_context()  # certifi CAs, as httpx had
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: httpcore.AsyncConnectionPool | None = None

    def _bind(self) -> tuple[httpcore.AsyncConnectionPool, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a pool and a semaphore belong to one event loop
            self._loop = loop
            self._slots = asyncio.Semaphore(self.policy.concurrency)
            self._pool = httpcore.AsyncConnectionPool(
                ssl_context=self._ssl_context, max_connections=self.policy.concurrency, keepalive_expiry=5.0,
                http1=True, http2=False, retries=0, network_backend=_PinnedBackend())
        return self._pool, self._slots

    async def close(self) -> None:
        if self._pool is not None and self._loop is asyncio.get_running_loop():
            await self._pool.aclose()
        self._pool = self._loop = None

    async def fetch(self, event: MemeEvent) -> bytes:
        """The image's bytes, or InputError; never any other exception for anything a user can write."""
        try:
            return await self._fetch(event)
        except (InputError, MemoryError):
            raise
        except Exception as e:  # a case none of the specific mappings below foresaw
            raise InputError(f"fetching the image failed: {type(e).__name__}: {e}", ErrorKind.FETCH_FAILED) from e

    async def _fetch(self, event: MemeEvent) -> bytes:
        if event.image_b64 is not None:
            return self._from_base64(event.image_b64)
        url = event.image_url or ""
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError as e:  # e.g. "http://[::1": an unclosed IPv6 bracket
            raise InputError(f"image_url {_show(url)} is not a valid URL: {e}", ErrorKind.FORBIDDEN_URL) from e
        if scheme not in self.policy.allowed_schemes or scheme not in {"file", "http", "https"}:
            raise InputError(f"image_url scheme {_show(scheme)} is not allowed (allowed: "
                             f"{sorted(self.policy.allowed_schemes - {'base64'})})", ErrorKind.FORBIDDEN_URL)
        _, slots = self._bind()
        async with slots:
            if scheme == "file":
                return await asyncio.to_thread(self._from_file, url)
            try:
                return await asyncio.wait_for(self._from_http(url), timeout=self.policy.timeout_s)
            except TimeoutError as e:
                raise InputError(f"fetching {_show(url)} took longer than {self.policy.timeout_s}s",
                                 ErrorKind.FETCH_FAILED) from e

    def _from_base64(self, data: str) -> bytes:
        if "base64" not in self.policy.allowed_schemes:
            raise InputError("inline base64 images are not allowed on this worker", ErrorKind.FORBIDDEN_URL)
        if len(data) * 3 // 4 > self.policy.max_bytes:
            raise InputError(f"inline image is over the {self.policy.max_bytes}-byte cap", ErrorKind.IMAGE_TOO_LARGE)
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as e:
            raise InputError(f"image_b64 is not valid base64: {e}", ErrorKind.IMAGE_UNDECODABLE) from e

    async def fetch_many(self, events: Sequence[MemeEvent]) -> list[bytes | InputError]:
        """`fetch` for a batch: the image bytes or the InputError of each event, in order. file:// reads run
        inline, one after the other: a local read of a meme (tens of KB, from the page cache) takes tens of
        microseconds, while a thread hop per file, or one thread for the batch, cost milliseconds per batch
        under load (each of the thread's syscalls hands the GIL back and waits to get it again)."""
        results: list[bytes | InputError | None] = [None] * len(events)
        files: list[tuple[int, str]] = []
        others = []
        for n, event in enumerate(events):
            url = event.image_url if event.image_b64 is None else None
            if (url is not None and "file" in self.policy.allowed_schemes and url[:5].lower() == "file:"
                    and urlsplit(url).scheme.lower() == "file"):
                files.append((n, url))
            else:
                others.append(n)

        async def one(n: int) -> None:
            try:
                results[n] = await self.fetch(events[n])
            except InputError as e:
                results[n] = e

        for (n, _), result in zip(files, self._read_files([u for _, u in files]), strict=True):
            results[n] = result
        await asyncio.gather(*(one(n) for n in others))
        return results

    def _read_files(self, urls: list[str]) -> list[bytes | InputError]:
        out: list[bytes | InputError] = []
        for url in urls:
            try:
                out.append(self._from_file(url))
            except (InputError, MemoryError) as e:
                out.append(e)
            except Exception as e:  # as fetch(): whatever a user-written path makes the OS layer raise
                out.append(InputError(f"fetching the image failed: {type(e).__name__}: {e}", ErrorKind.FETCH_FAILED))
        return out

    def _from_file(self, url: str) -> bytes:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise InputError(f"file:// URL {_show(url)} names a host; only local files are allowed",
                             ErrorKind.FORBIDDEN_URL)
        name = os.fsdecode(unquote_to_bytes(parts.path))  # file names are bytes: %FF names the byte 0xFF
        if "\0" in name:
            raise InputError(f"file:// URL {_show(url)} contains a NUL byte", ErrorKind.FORBIDDEN_URL)
        if (data := self._read_confined(name, url)) is not None:
            return data
        try:
            path = Path(name).resolve()
        except (OSError, ValueError, RuntimeError) as e:
            raise InputError(f"file:// URL {_show(url)} is not a usable path: {e}", ErrorKind.FORBIDDEN_URL) from e
        if not path.is_relative_to(self.policy.file_root):
            raise InputError(f"{_show(url)} is outside the allowed root {self.policy.file_root}",
                             ErrorKind.FORBIDDEN_URL)
        try:
            # O_NONBLOCK: opening a FIFO with no writer would otherwise wait forever (and fetch_many reads inline,
            # on the event loop); fstat before any read refuses a FIFO, a device or a directory.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise InputError(f"{_show(url)} is {_file_type(info.st_mode)}, not a regular file; only regular "
                                     "files are read", ErrorKind.IMAGE_MISSING)
                return self._read_regular(fd, info.st_size, url)
            finally:
                os.close(fd)
        except FileNotFoundError as e:
            raise InputError(f"{_show(url)} does not exist", ErrorKind.IMAGE_MISSING) from e
        except IsADirectoryError as e:
            raise InputError(f"{_show(url)} is a directory, not an image", ErrorKind.IMAGE_MISSING) from e
        except PermissionError as e:
            raise InputError(f"{_show(url)} is not readable by the worker", ErrorKind.IMAGE_MISSING) from e
        except (OSError, ValueError) as e:  # name too long, not a directory, I/O error, ...
            raise InputError(f"{_show(url)} cannot be read: {type(e).__name__}: {e}", ErrorKind.IMAGE_MISSING) from e

    def _read_confined(self, name: str, url: str) -> bytes | None:
        """The fast path for a regular file: open it, then ask the kernel which file was opened
        (/proc/self/fd) and check that one against the root: one open and one readlink instead of
        Path.resolve()'s lstat of every path component, and no window between the check and the read.
        None sends the caller down the full path (which gives every error its usual message)."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # NONBLOCK: a FIFO must not hang us
        except (OSError, ValueError):
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return None
            try:
                opened = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:  # no /proc: the full path
                return None
            # The kernel's name for an open file is absolute and canonical, as the resolved root is, so a string
            # prefix (up to a separator) is Path.is_relative_to without building two Path objects per event.
            root = self._root_prefix
            if not (opened.startswith(root) or opened == root[:-1]):
                raise InputError(f"{_show(url)} is outside the allowed root {self.policy.file_root}",
                                 ErrorKind.FORBIDDEN_URL)
            return self._read_regular(fd, info.st_size, url)
        except OSError:
            return None
        finally:
            os.close(fd)

    def _read_regular(self, fd: int, size: int, url: str) -> bytes:
        """The bytes of the regular file open on `fd` (fstat said `size`), up to the cap."""
        if size > self.policy.max_bytes:
            raise InputError(f"{_show(url)} is {size} bytes, over the {self.policy.max_bytes}-byte cap",
                             ErrorKind.IMAGE_TOO_LARGE)
        # Sized by fstat (not max_bytes + 1: that allocates the whole cap per read); os.read, not a buffered
        # file object; a short read (or a file that grew since fstat) reads on, up to the cap.
        data = os.read(fd, size + 1)
        while len(data) <= self.policy.max_bytes and (
                more := os.read(fd, min(1 << 16, self.policy.max_bytes + 1 - len(data)))):
            data += more  # chunked: os.read allocates what it is asked for before reading
        if len(data) > self.policy.max_bytes:  # it grew since fstat
            raise InputError(f"{_show(url)} is over the {self.policy.max_bytes}-byte cap", ErrorKind.IMAGE_TOO_LARGE)
        return data

    def _parse_hop(self, url: str) -> _Hop:
        try:
            scheme = urlsplit(url).scheme.lower()
            parsed = httpx.URL(url)
            raw_host = parsed.raw_host.decode("ascii").lower()
            port = parsed.port
        except (ValueError, UnicodeError, httpx.InvalidURL) as e:
            raise InputError(f"image_url {_show(url)} is not a valid URL: {e}", ErrorKind.FORBIDDEN_URL) from e
        if scheme not in (self.policy.allowed_schemes & {"http", "https"}):
            raise InputError(f"{_show(url)} uses a scheme that is not allowed", ErrorKind.FORBIDDEN_URL)
        if parsed.userinfo:
            raise InputError(f"image_url {_show(url)} carries credentials; they are never sent",
                             ErrorKind.FORBIDDEN_URL)
        if port is None:
            port = 443 if scheme == "https" else 80
        if not 1 <= port <= 65535:
            raise InputError(f"image_url {_show(url)} has port {port}, outside 1-65535", ErrorKind.FORBIDDEN_URL)
        if not raw_host:
            raise InputError(f"image_url {_show(url)} has no host", ErrorKind.FORBIDDEN_URL)
        try:
            literal = ipaddress.ip_address(raw_host)
        except ValueError:
            literal = None
            name = raw_host[:-1] if raw_host.endswith(".") else raw_host
            if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
                raise InputError(f"image_url {_show(url)} does not name a valid host",
                                 ErrorKind.FORBIDDEN_URL) from None
        return _Hop(url=parsed, host=raw_host, port=port, literal=literal)

    async def _addresses(self, hop: _Hop) -> tuple[str, ...]:
        """Resolve once and check every address; the connection may only use these."""
        if hop.literal is not None:
            candidates = [hop.literal]
        else:
            try:
                answers = await self.resolver(hop.host, hop.port)
            except UnicodeError as e:
                raise InputError(f"host {_show(hop.host)} is not a valid name: {e}", ErrorKind.FORBIDDEN_URL) from e
            except (OSError, ValueError) as e:  # socket.gaierror is an OSError
                raise InputError(f"cannot resolve host {_show(hop.host)}: {e}", ErrorKind.FETCH_FAILED) from e
            try:
                candidates = [ipaddress.ip_address(a) for a in answers]
            except ValueError as e:
                raise InputError(f"resolving {_show(hop.host)} gave a non-address: {e}", ErrorKind.FETCH_FAILED) from e
            if not candidates:
                raise InputError(f"host {_show(hop.host)} has no addresses", ErrorKind.FETCH_FAILED)
        for ip in candidates:
            reason = blocked_reason(ip, self.policy.allowed_networks)
            if reason is not None:
                raise InputError(f"{_show(str(hop.url))} resolves to {ip} ({reason}); fetching it is blocked",
                                 ErrorKind.FORBIDDEN_URL)
        return tuple(dict.fromkeys(str(ip) for ip in candidates))

    async def _from_http(self, url: str) -> bytes:
        pool, _ = self._bind()
        t = self.policy.timeout_s
        for _hop in range(self.policy.max_redirects + 1):
            hop = self._parse_hop(url)
            addresses = await self._addresses(hop)
            target = hop.url.raw_path
            request_url = httpcore.URL(scheme=hop.url.raw_scheme, host=hop.host.encode("ascii"), port=hop.port,
                                       target=target)
            headers = [(b"Host", hop.url.netloc), (b"Accept", b"image/*"), (b"User-Agent", b"memeguard")]
            token = _PINNED.set({(hop.host, hop.port): addresses})
            try:
                async with pool.stream("GET", request_url, headers=headers, extensions={
                        "timeout": {"connect": t, "read": t, "write": t, "pool": t}}) as response:
                    if response.status in _REDIRECTS:
                        location = dict((k.lower(), v) for k, v in response.headers).get(b"location", b"")
                        if not location:
                            raise InputError(f"{_show(url)} redirected without a Location", ErrorKind.FETCH_FAILED)
                        try:
                            url = str(hop.url.join(location.decode("latin-1")))
                        except (ValueError, UnicodeError, httpx.InvalidURL) as e:
                            raise InputError(f"{_show(url)} redirected to an invalid URL: {e}",
                                             ErrorKind.FORBIDDEN_URL) from e
                        continue
                    return await self._body(url, response)
            except InputError:
                raise
            except Exception as e:  # httpcore's connect/TLS/protocol/timeout errors, and anything else
                raise InputError(f"GET {_show(url)} failed: {type(e).__name__}: {e}", ErrorKind.FETCH_FAILED) from e
            finally:
                _PINNED.reset(token)
        raise InputError(f"{_show(url)} redirected more than {self.policy.max_redirects} times", ErrorKind.FETCH_FAILED)

    async def _body(self, url: str, response: httpcore.Response) -> bytes:
        if response.status != 200:
            raise InputError(f"GET {_show(url)} answered HTTP {response.status}", ErrorKind.FETCH_FAILED)
        declared = dict((k.lower(), v) for k, v in response.headers).get(b"content-length", b"")
        if declared.strip().isdigit() and int(declared) > self.policy.max_bytes:
            raise InputError(f"{_show(url)} is {int(declared)} bytes, over the {self.policy.max_bytes}-byte cap",
                             ErrorKind.IMAGE_TOO_LARGE)
        body = bytearray()
        async for chunk in response.aiter_stream():
            body += chunk
            if len(body) > self.policy.max_bytes:
                raise InputError(f"{_show(url)} is over the {self.policy.max_bytes}-byte cap",
                                 ErrorKind.IMAGE_TOO_LARGE)
        return bytes(body)
