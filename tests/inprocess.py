"""In-process building blocks for pipeline tests: the real pipeline on a tiny real bundle, a fetcher whose
DNS answers come from a fake resolver (no lookup ever leaves the machine), and in-memory output topics."""

import asyncio
import ipaddress
import socket
from pathlib import Path

from consumer.core.cache import VerdictCache
from consumer.core.fetch import FetchPolicy, ImageFetcher
from consumer.core.images import ImageDecoder
from consumer.core.pipeline import ModerationPipeline
from consumer.core.policy import DecisionPolicy
from consumer.core.runtime import BundleRuntime
from tests.generative import tiny_png


class MemoryTopic:
    """An OutputTopic (consumer/core/seams.py) in memory: send() returns an already-acknowledged future."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.messages: list[tuple[bytes | None, bytes]] = []

    async def send(self, key: bytes | None, value: bytes) -> asyncio.Future:
        self.messages.append((key, value))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


async def fake_resolver(host: str, port: int) -> list[str]:
    """Names under .test resolve to addresses the fetcher must block; nothing ever leaves the machine."""
    answers = {"meta.test": ["169.254.169.254"], "private.test": ["10.0.0.7"], "mapped.test": ["::ffff:127.0.0.2"]}
    if host in answers:
        return answers[host]
    if host.endswith(".test") and len(host) % 3 == 0:
        return ["192.0.2.1"]  # TEST-NET-1: not global
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def write_image_root(root: Path) -> Path:
    (root / "meme.png").write_bytes(tiny_png())
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def build_pipeline(tiny_bundle: Path, redis_url: str, root: Path, **overrides) -> ModerationPipeline:
    policy = FetchPolicy(allowed_schemes=frozenset({"base64", "file", "http", "https"}), file_root=root.resolve(),
                         max_bytes=2_000_000, timeout_s=1.0, max_redirects=2,
                         allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))
    decoder = ImageDecoder(policy.decode)
    return ModerationPipeline(
        runtime=BundleRuntime.load(tiny_bundle, providers="cpu", intra_op_threads=1),
        cache=VerdictCache(redis_url, 7 * 24 * 3600, 1.0, 0.5),
        fetcher=ImageFetcher(policy, resolver=fake_resolver),
        decoder=decoder,
        **{"policy": DecisionPolicy(), "max_event_bytes": 256 * 1024, "max_image_pixels": 4_000_000, **overrides},
    )
