"""The fetcher against hostile URLs: typed errors for every malformed reference, SSRF pinning (resolve once,
check every address, connect to the checked one), the blocked address ranges, TLS with the host's name, and
bounded concurrency. Real HTTP(S) servers on loopback only; names are answered by an injected resolver,
never by real DNS."""

import asyncio
import collections
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpcore
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from consumer.core import fetch as fetch_module
from consumer.core.fetch import FetchPolicy, ImageFetcher, blocked_reason
from consumer.errors import InputError
from schemas import ErrorKind, MemeEvent
from tests.test_fetch import fetch, kind_of

IMAGE_A = b"\x89PNG image A served on 127.0.0.1"
IMAGE_B = b"\x89PNG image B served on 127.0.0.2"


class FakeResolver:
    """Answers from a script, one answer list per call and host; records every call."""

    def __init__(self, answers: dict[str, list[list[str]]] | None = None, error: Exception | None = None) -> None:
        self.answers = {h: list(a) for h, a in (answers or {}).items()}
        self.error = error
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if self.error is not None:
            raise self.error
        script = self.answers.get(host)
        if not script:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} is not in the test resolver")
        return script.pop(0) if len(script) > 1 else script[0]

    def count(self, host: str) -> int:
        return sum(1 for h, _ in self.calls if h == host)


def make_fetcher(tmp_path: Path, resolver=None, allowed=("127.0.0.1/32",), ssl_context=None, **kw) -> ImageFetcher:
    policy = FetchPolicy(allowed_schemes=frozenset(kw.pop("schemes", {"base64", "file", "http", "https"})),
                         file_root=tmp_path.resolve(), max_bytes=kw.pop("max_bytes", 100_000),
                         timeout_s=kw.pop("timeout_s", 3.0), max_redirects=3,
                         allowed_networks=tuple(ipaddress.ip_network(n) for n in allowed), **kw)
    return ImageFetcher(policy, resolver=resolver or FakeResolver(), ssl_context=ssl_context)


class _Images(BaseHTTPRequestHandler):
    body = b""
    hosts: list[str]

    def do_GET(self) -> None:  # noqa: N802
        self.hosts.append(self.headers.get("Host", ""))
        if self.path.startswith("/redirect-to/"):
            self.send_response(302)
            self.send_header("Location", "http://" + self.path.removeprefix("/redirect-to/"))
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


def _serve(address: str, port: int, body: bytes, ssl_context: ssl.SSLContext | None = None):
    handler = type("H", (_Images,), {"body": body, "hosts": []})
    server = ThreadingHTTPServer((address, port), handler)
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler


@pytest.fixture(scope="module")
def twin_servers():
    """Image A on 127.0.0.1:P and image B on 127.0.0.2:P (same port): only the address decides which answers."""
    for _ in range(20):
        a, ha = _serve("127.0.0.1", 0, IMAGE_A)
        port = a.server_address[1]
        try:
            b, hb = _serve("127.0.0.2", port, IMAGE_B)
        except OSError:
            a.shutdown()
            a.server_close()
            continue
        yield port, ha, hb
        a.shutdown()
        b.shutdown()
        a.server_close()
        b.server_close()
        return
    pytest.skip("could not bind 127.0.0.1 and 127.0.0.2 on the same port")


# --- typed errors: the cases that escaped as internal errors (issue 11, found 3) --------------------------


def test_unclosed_ipv6_bracket_is_forbidden_url_not_internal_error(tmp_path):
    assert kind_of(make_fetcher(tmp_path), image_url="http://[::1") == ErrorKind.FORBIDDEN_URL


def test_empty_dns_label_is_forbidden_url_not_unicode_error(tmp_path):
    resolver = FakeResolver(error=UnicodeError("label empty or too long"))
    assert kind_of(make_fetcher(tmp_path, resolver), image_url="http://a..b/") == ErrorKind.FORBIDDEN_URL
    assert resolver.calls == []  # refused on syntax, before any resolution


def test_nul_byte_in_file_url_is_forbidden_url_not_value_error(tmp_path):
    assert kind_of(make_fetcher(tmp_path), image_url="file:///x%00") == ErrorKind.FORBIDDEN_URL
    assert kind_of(make_fetcher(tmp_path), image_url=tmp_path.as_uri() + "/a%00b.png") == ErrorKind.FORBIDDEN_URL


@pytest.mark.parametrize("url", [
    "http://" + "a" * 64 + ".test/x.png",                      # a label over 63 characters
    "http://" + ".".join(["abcdefghi"] * 26) + ".test/x.png",  # a name over 253 characters
    "http://exa mple.test/x.png", "http://-leading.test/", "http://trailing-.test/",
    "http://h.test:0/", "http://h.test:65536/", "http://h.test:99999/", "http://h.test:-1/", "http://h.test:abc/",
    "http://user:password@h.test/x.png", "http://[::1]extra/", "http://[not-an-address]/", "http:///x.png",
    "javascript:alert(1)", "data:image/png;base64,iVBORw0KGgo=", "ftp://h.test/x.png", "gopher://h.test/",
    "//h.test/x.png", "x.png", "", "http://h.test/\x00", "ht tp://h/",
])
def test_malformed_url_is_forbidden_url(tmp_path, url):
    resolver = FakeResolver({"h.test": [["203.0.113.9"]]})
    assert kind_of(make_fetcher(tmp_path, resolver), image_url=url) == ErrorKind.FORBIDDEN_URL, url
    assert resolver.calls == [], url


def test_unresolvable_or_broken_resolution_is_fetch_failed(tmp_path):
    assert kind_of(make_fetcher(tmp_path, FakeResolver()), image_url="http://nowhere.test/x") == ErrorKind.FETCH_FAILED
    for answer in ([], ["not-an-ip"]):
        f = make_fetcher(tmp_path, FakeResolver({"odd.test": [answer]}))
        assert kind_of(f, image_url="http://odd.test/x") == ErrorKind.FETCH_FAILED, answer
    f = make_fetcher(tmp_path, FakeResolver(error=OSError("resolver socket closed")))
    assert kind_of(f, image_url="http://any.test/x") == ErrorKind.FETCH_FAILED


def test_nothing_listening_is_fetch_failed(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the fetch: nothing listens there
    f = make_fetcher(tmp_path, FakeResolver({"closed.test": [["127.0.0.1"]]}))
    assert kind_of(f, image_url=f"http://closed.test:{port}/x") == ErrorKind.FETCH_FAILED


def test_unreadable_file_names_are_image_missing(tmp_path):
    f = make_fetcher(tmp_path)
    assert kind_of(f, image_url=(tmp_path / ("a" * 300)).as_uri()) == ErrorKind.IMAGE_MISSING  # ENAMETOOLONG
    (tmp_path / "plain").write_bytes(b"x")
    assert kind_of(f, image_url=(tmp_path / "plain" / "child.png").as_uri()) == ErrorKind.IMAGE_MISSING  # ENOTDIR
    assert kind_of(f, image_url=tmp_path.as_uri() + "/nope%FF.png") == ErrorKind.IMAGE_MISSING  # not UTF-8
    (tmp_path / b"raw\xff.png".decode("utf-8", "surrogateescape")).write_bytes(b"bytes name")
    assert fetch(f, image_url=tmp_path.as_uri() + "/raw%FF.png") == b"bytes name"


def test_international_host_is_resolved_by_its_idna_name(tmp_path, twin_servers):
    port, ha, _ = twin_servers
    resolver = FakeResolver({"xn--bcher-kva.test": [["127.0.0.1"]]})
    assert fetch(make_fetcher(tmp_path, resolver), image_url=f"http://bücher.test:{port}/i.png") == IMAGE_A
    assert resolver.calls == [("xn--bcher-kva.test", port)]
    assert ha.hosts[-1] == f"xn--bcher-kva.test:{port}"


@settings(max_examples=int(os.environ.get("MEMEGUARD_URL_EXAMPLES", "100")), derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.text(max_size=80),
    st.builds(lambda s, rest: s + rest, st.sampled_from(["http://", "https://", "file://", "HTTP://", "http://["]),
              st.text(st.characters(codec="utf-8") | st.sampled_from(list("[]:@%/.?#\\-_0")), max_size=60)),
))
def test_fetch_is_total_for_any_url(url):
    """Whatever the URL, fetch raises InputError (or returns bytes); never anything else. Offline: any
    connection attempt is answered by a refusing backend."""
    root = Path("/nonexistent-memeguard-root")
    f = ImageFetcher(FetchPolicy(allowed_schemes=frozenset({"file", "http", "https"}), file_root=root,
                                 max_bytes=1000, timeout_s=1.0, max_redirects=1),
                     resolver=FakeResolver(error=socket.gaierror(socket.EAI_NONAME, "no")))

    async def refuse(self, host, port, **kw):
        raise httpcore.ConnectError("offline test")

    try:
        event = MemeEvent(event_id="e", post_id="p", image_url=url)
    except ValidationError:
        assume(False)  # the schema refuses it first (e.g. lone surrogates); not the fetcher's case
    original = fetch_module._PinnedBackend.connect_tcp
    fetch_module._PinnedBackend.connect_tcp = refuse
    try:
        with pytest.raises(InputError):
            asyncio.run(f.fetch(event))
    finally:
        fetch_module._PinnedBackend.connect_tcp = original


# --- SSRF: blocked ranges ---------------------------------------------------------------------------------


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.255.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "0.1.2.3",
    "100.64.0.1", "192.0.0.1", "192.0.2.1", "198.18.0.1", "240.0.0.1", "224.0.0.1", "239.255.255.250",
    "255.255.255.255", "::", "::1", "fe80::1", "fc00::1", "fd12:3456::1", "fec0::1", "ff02::1", "ff0e::1",
    "2001:db8::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1",
    "64:ff9b::7f00:1", "64:ff9b::808:808", "64:ff9b:1::a00:1", "2002:7f00:1::1", "2002:808:808::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001::1",
])
def test_non_public_and_tunnelling_addresses_are_blocked(address):
    assert blocked_reason(ipaddress.ip_address(address)) is not None, address


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "203.0.114.1", "2606:4700:4700::1111",
                                     "2a00:1450:4001:80e::200e", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address):
    assert blocked_reason(ipaddress.ip_address(address)) is None, address


def test_allow_list_exempts_including_through_the_embedded_ipv4():
    nets = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("64:ff9b::/96")]
    for address in ("127.0.0.1", "::ffff:127.0.0.1", "64:ff9b::a00:1"):
        assert blocked_reason(ipaddress.ip_address(address), nets) is None, address
    assert blocked_reason(ipaddress.ip_address("10.0.0.1"), nets) is not None


def test_one_blocked_address_among_the_answers_refuses_the_host(tmp_path):
    resolver = FakeResolver({"mixed.test": [["203.0.113.7", "64:ff9b::a9fe:a9fe"]]})
    assert kind_of(make_fetcher(tmp_path, resolver), image_url="http://mixed.test/x") == ErrorKind.FORBIDDEN_URL


# --- SSRF: resolve once, connect to the checked address ---------------------------------------------------


def test_dns_rebinding_is_refused_connection_goes_to_the_checked_address(tmp_path, twin_servers):
    """The first answer (127.0.0.1, allow-listed) is checked; a second lookup would say 127.0.0.2, where image B
    is served. Image A arrives and the name was resolved exactly once: nothing resolved it again."""
    port, ha, hb = twin_servers
    resolver = FakeResolver({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
    assert fetch(make_fetcher(tmp_path, resolver), image_url=f"http://rebind.test:{port}/img.png") == IMAGE_A
    assert resolver.calls == [("rebind.test", port)]
    assert ha.hosts[-1] == f"rebind.test:{port}"  # the Host header is the name, not the address


def test_rebinding_to_the_blocked_address_first_is_refused_before_connecting(tmp_path, twin_servers):
    port, _, hb = twin_servers
    served = len(hb.hosts)
    resolver = FakeResolver({"rebind.test": [["127.0.0.2"], ["127.0.0.1"]]})
    assert kind_of(make_fetcher(tmp_path, resolver), image_url=f"http://rebind.test:{port}/img.png") == \
        ErrorKind.FORBIDDEN_URL
    assert resolver.calls == [("rebind.test", port)] and len(hb.hosts) == served


def test_every_redirect_hop_is_resolved_once_checked_and_pinned(tmp_path, twin_servers):
    port, ha, hb = twin_servers
    resolver = FakeResolver({"first.test": [["127.0.0.1"], ["127.0.0.2"]],
                             "second.test": [["127.0.0.1"], ["127.0.0.2"]]})
    url = f"http://first.test:{port}/redirect-to/second.test:{port}/img.png"
    assert fetch(make_fetcher(tmp_path, resolver), image_url=url) == IMAGE_A
    assert resolver.count("first.test") == 1 and resolver.count("second.test") == 1
    assert ha.hosts[-2:] == [f"first.test:{port}", f"second.test:{port}"]
    # A hop whose name now points at a blocked address is refused, though the first hop was fine.
    evil = FakeResolver({"first.test": [["127.0.0.1"]], "evil.test": [["127.0.0.2"]]})
    url = f"http://first.test:{port}/redirect-to/evil.test:{port}/img.png"
    assert kind_of(make_fetcher(tmp_path, evil), image_url=url) == ErrorKind.FORBIDDEN_URL


def test_pinned_backend_never_resolves_a_name_it_was_not_given():
    async def go():
        await fetch_module._PinnedBackend().connect_tcp("localhost", 80)

    with pytest.raises(httpcore.ConnectError, match="no checked address"):
        asyncio.run(go())


# --- https: the name is verified and sent as SNI while the connection goes to the pinned address ----------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    d = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=memeguard test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=images.test")
    (d / "ext.cnf").write_text("subjectAltName=DNS:images.test\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "leaf.pem", "-days", "2", "-extfile", "ext.cnf")
    return d


@pytest.fixture(scope="module")
def tls_server(tls_files):
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tls_files / "leaf.pem", tls_files / "leaf.key")
    sni: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: sni.append(name)
    server, handler = _serve("127.0.0.1", 0, IMAGE_A, server_ctx)
    yield server.server_address[1], handler, sni
    server.shutdown()
    server.server_close()


def test_https_keeps_host_header_sni_and_certificate_check_of_the_name(tmp_path, tls_files, tls_server):
    port, handler, sni = tls_server
    client_ctx = ssl.create_default_context(cafile=str(tls_files / "ca.pem"))
    resolver = FakeResolver({"images.test": [["127.0.0.1"], ["127.0.0.2"]],
                             "other.test": [["127.0.0.1"]]})
    f = make_fetcher(tmp_path, resolver, ssl_context=client_ctx)
    assert fetch(f, image_url=f"https://images.test:{port}/i.png") == IMAGE_A
    assert sni[-1] == "images.test" and handler.hosts[-1] == f"images.test:{port}"
    assert resolver.calls == [("images.test", port)]
    # Same address, a name the certificate does not cover: verification fails, as it must.
    assert kind_of(f, image_url=f"https://other.test:{port}/i.png") == ErrorKind.FETCH_FAILED
    # An untrusted CA (the default store does not know the test CA) fails too.
    untrusting = make_fetcher(tmp_path, FakeResolver({"images.test": [["127.0.0.1"]]}))
    assert kind_of(untrusting, image_url=f"https://images.test:{port}/i.png") == ErrorKind.FETCH_FAILED


# --- bounded concurrency ----------------------------------------------------------------------------------


def test_fetch_concurrency_is_bounded(tmp_path):
    state = collections.Counter()
    lock = threading.Lock()

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            with lock:
                state["now"] += 1
                state["peak"] = max(state["peak"], state["now"])
            time.sleep(0.15)
            with lock:
                state["now"] -= 1
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    f = make_fetcher(tmp_path, FakeResolver({"slow.test": [["127.0.0.1"]]}), concurrency=3)

    async def many():
        events = [MemeEvent(event_id=f"e{i}", post_id="p", image_url=f"http://slow.test:{port}/{i}") for i in range(10)]
        return await asyncio.gather(*(f.fetch(e) for e in events))

    try:
        assert asyncio.run(many()) == [b"ok"] * 10
    finally:
        server.shutdown()
        server.server_close()
    assert 1 <= state["peak"] <= 3
