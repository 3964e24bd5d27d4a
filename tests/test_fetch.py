"""The image fetcher's guards, without a broker. HTTP cases use a real local server."""

import asyncio
import base64
import io
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from consumer.core.fetch import FetchPolicy, ImageFetcher
from consumer.core.images import decode_image
from consumer.errors import InputError
from schemas import ErrorKind, MemeEvent


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/redirect/"):
            n = int(self.path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", f"/redirect/{n + 1}" if n < 10 else "/big")
            self.end_headers()
        elif self.path == "/to-private":
            self.send_response(302)
            self.send_header("Location", "http://192.168.1.1/x.png")
            self.end_headers()
        elif self.path == "/big":
            self.send_response(200)
            self.end_headers()  # no Content-Length: the cap must hold while streaming
            self.wfile.write(b"x" * 5000)
        else:
            self.send_error(404)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    s = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{s.server_address[1]}"
    s.shutdown()


def fetcher(tmp_path: Path, allow_loopback: bool = True, **kw) -> ImageFetcher:
    import ipaddress

    nets = (ipaddress.ip_network("127.0.0.0/8"),) if allow_loopback else ()
    return ImageFetcher(FetchPolicy(allowed_schemes=frozenset(kw.pop("schemes", {"base64", "file", "http", "https"})),
                                    file_root=tmp_path.resolve(), max_bytes=kw.pop("max_bytes", 1000),
                                    timeout_s=2.0, max_redirects=3, allowed_networks=nets),
                        resolver=loopback_resolver)


async def loopback_resolver(host: str, port: int) -> list[str]:
    """Test resolver (never real DNS): only localhost has addresses."""
    if host == "localhost":
        return ["127.0.0.1", "::1"]
    raise socket.gaierror(socket.EAI_NONAME, f"{host} is unknown to the test resolver")


def fetch(f: ImageFetcher, **image) -> bytes:
    return asyncio.run(f.fetch(MemeEvent(event_id="e", post_id="p", **image)))


def kind_of(f: ImageFetcher, **image) -> ErrorKind:
    with pytest.raises(InputError) as e:
        fetch(f, **image)
    return e.value.kind


def test_file_under_root_is_read_and_outside_is_refused(tmp_path):
    (tmp_path / "a.png").write_bytes(b"abc")
    f = fetcher(tmp_path)
    assert fetch(f, image_url=(tmp_path / "a.png").as_uri()) == b"abc"
    assert kind_of(f, image_url=(tmp_path / ".." / "etc.png").as_uri()) == ErrorKind.FORBIDDEN_URL
    assert kind_of(f, image_url="file:///etc/passwd") == ErrorKind.FORBIDDEN_URL
    assert kind_of(f, image_url="file://otherhost/a.png") == ErrorKind.FORBIDDEN_URL
    assert kind_of(f, image_url=(tmp_path / "none.png").as_uri()) == ErrorKind.IMAGE_MISSING


def test_symlink_escaping_the_root_is_refused(tmp_path):
    (tmp_path / "link.png").symlink_to("/etc/hostname")
    assert kind_of(fetcher(tmp_path), image_url=(tmp_path / "link.png").as_uri()) == ErrorKind.FORBIDDEN_URL


def test_base64_caps_and_validation(tmp_path):
    f = fetcher(tmp_path)
    assert fetch(f, image_b64=base64.b64encode(b"hello").decode()) == b"hello"
    assert kind_of(f, image_b64="!!!not base64") == ErrorKind.IMAGE_UNDECODABLE
    assert kind_of(f, image_b64=base64.b64encode(b"x" * 2000).decode()) == ErrorKind.IMAGE_TOO_LARGE
    assert kind_of(fetcher(tmp_path, schemes={"file"}), image_b64="aGk=") == ErrorKind.FORBIDDEN_URL


def test_private_and_loopback_addresses_are_blocked_unless_allow_listed(tmp_path, server):
    blocked = fetcher(tmp_path, allow_loopback=False)
    for url in ("http://127.0.0.1:9/x.png", "http://10.0.0.1/x.png", "http://169.254.169.254/latest/meta-data",
                "http://[::1]/x.png", "http://localhost/x.png"):
        assert kind_of(blocked, image_url=url) == ErrorKind.FORBIDDEN_URL, url
    # A public host may redirect to a private one: each hop is checked.
    assert kind_of(fetcher(tmp_path), image_url=f"{server}/to-private") == ErrorKind.FORBIDDEN_URL


def test_http_redirect_limit_size_cap_and_errors(tmp_path, server):
    f = fetcher(tmp_path)
    assert kind_of(f, image_url=f"{server}/redirect/0") == ErrorKind.FETCH_FAILED  # more than 3 hops
    assert kind_of(f, image_url=f"{server}/redirect/9") == ErrorKind.IMAGE_TOO_LARGE  # 2 hops, then 5000 bytes
    assert kind_of(f, image_url=f"{server}/nothing") == ErrorKind.FETCH_FAILED
    assert kind_of(f, image_url="gopher://example.org/x") == ErrorKind.FORBIDDEN_URL


def test_decode_caps_pixels_before_decoding_and_decodes_by_content():
    buf = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buf, format="PNG")
    with pytest.raises(InputError) as e:
        decode_image(buf.getvalue(), max_pixels=10_000_000)
    assert e.value.kind == ErrorKind.PIXEL_BOMB
    jpeg = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(jpeg, format="JPEG")
    assert decode_image(jpeg.getvalue(), 10_000).size == (40, 30)
    with pytest.raises(InputError) as e:
        decode_image(jpeg.getvalue()[:50], 10_000)
    assert e.value.kind == ErrorKind.IMAGE_UNDECODABLE
