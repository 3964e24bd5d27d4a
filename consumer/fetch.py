"""Load an event's image bytes: inline base64, file:// under an allowed root, or http(s)://.

An event must not make the worker read arbitrary files or reach internal services, so every reference
is checked before any I/O: scheme allow-list, path confinement, private-address blocking on every
redirect hop, a size cap while streaming, a total time limit and a redirect limit.
"""

import asyncio
import base64
import binascii
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from consumer.errors import InputError
from schemas import ErrorKind, MemeEvent


@dataclass(frozen=True)
class FetchPolicy:
    allowed_schemes: frozenset[str]
    file_root: Path
    max_bytes: int
    timeout_s: float
    max_redirects: int
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def from_settings(cls, s) -> "FetchPolicy":
        return cls(
            allowed_schemes=frozenset(s.fetch_allowed_schemes),
            file_root=Path(s.file_root).resolve(),
            max_bytes=s.max_image_bytes,
            timeout_s=s.fetch_timeout_s,
            max_redirects=s.fetch_max_redirects,
            allowed_networks=tuple(ipaddress.ip_network(n, strict=False) for n in s.fetch_allowed_networks),
        )


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_global and not ip.is_multicast


class ImageFetcher:
    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy
        # Redirects are followed by hand so each hop's address is checked.
        self._http = httpx.AsyncClient(follow_redirects=False, trust_env=False,
                                       timeout=httpx.Timeout(policy.timeout_s))

    async def close(self) -> None:
        await self._http.aclose()

    async def fetch(self, event: MemeEvent) -> bytes:
        if event.image_b64 is not None:
            return self._from_base64(event.image_b64)
        url = event.image_url or ""
        scheme = urlsplit(url).scheme.lower()
        if scheme not in self.policy.allowed_schemes or scheme not in {"file", "http", "https"}:
            raise InputError(f"image_url scheme {scheme!r} is not allowed (allowed: "
                             f"{sorted(self.policy.allowed_schemes)})", ErrorKind.FORBIDDEN_URL)
        if scheme == "file":
            return await asyncio.to_thread(self._from_file, url)
        try:
            return await asyncio.wait_for(self._from_http(url), timeout=self.policy.timeout_s)
        except TimeoutError as e:
            raise InputError(f"fetching {url} took longer than {self.policy.timeout_s}s",
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

    def _from_file(self, url: str) -> bytes:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise InputError(f"file:// URL {url} names a host; only local files are allowed", ErrorKind.FORBIDDEN_URL)
        path = Path(unquote(parts.path)).resolve()
        if not path.is_relative_to(self.policy.file_root):
            raise InputError(f"{url} is outside the allowed root {self.policy.file_root}", ErrorKind.FORBIDDEN_URL)
        try:
            size = path.stat().st_size
            if size > self.policy.max_bytes:
                raise InputError(f"{url} is {size} bytes, over the {self.policy.max_bytes}-byte cap",
                                 ErrorKind.IMAGE_TOO_LARGE)
            return path.read_bytes()
        except FileNotFoundError as e:
            raise InputError(f"{url} does not exist", ErrorKind.IMAGE_MISSING) from e
        except IsADirectoryError as e:
            raise InputError(f"{url} is a directory, not an image", ErrorKind.IMAGE_MISSING) from e
        except PermissionError as e:
            raise InputError(f"{url} is not readable by the worker", ErrorKind.IMAGE_MISSING) from e

    async def _check_host(self, url: str) -> None:
        host = urlsplit(url).hostname
        if not host:
            raise InputError(f"image_url {url!r} has no host", ErrorKind.FORBIDDEN_URL)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise InputError(f"cannot resolve host {host!r} of {url}: {e}", ErrorKind.FETCH_FAILED) from e
        for info in infos:
            ip = ipaddress.ip_address(info[4][0])
            allowed = any(ip in net for net in self.policy.allowed_networks)
            if not allowed and not _is_public(ip):
                raise InputError(f"{url} resolves to non-public address {ip}; fetching it is blocked",
                                 ErrorKind.FORBIDDEN_URL)

    async def _from_http(self, url: str) -> bytes:
        for _hop in range(self.policy.max_redirects + 1):
            if urlsplit(url).scheme.lower() not in (self.policy.allowed_schemes & {"http", "https"}):
                raise InputError(f"redirect to {url} uses a scheme that is not allowed", ErrorKind.FORBIDDEN_URL)
            await self._check_host(url)
            try:
                async with self._http.stream("GET", url) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    if response.status_code != 200:
                        raise InputError(f"GET {url} answered HTTP {response.status_code}", ErrorKind.FETCH_FAILED)
                    declared = int(response.headers.get("content-length") or 0)
                    if declared > self.policy.max_bytes:
                        raise InputError(f"{url} is {declared} bytes, over the {self.policy.max_bytes}-byte cap",
                                         ErrorKind.IMAGE_TOO_LARGE)
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > self.policy.max_bytes:
                            raise InputError(f"{url} is over the {self.policy.max_bytes}-byte cap",
                                             ErrorKind.IMAGE_TOO_LARGE)
                    return bytes(body)
            except httpx.HTTPError as e:
                raise InputError(f"GET {url} failed: {type(e).__name__}: {e}", ErrorKind.FETCH_FAILED) from e
        raise InputError(f"{url} redirected more than {self.policy.max_redirects} times", ErrorKind.FETCH_FAILED)
