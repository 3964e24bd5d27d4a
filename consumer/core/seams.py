"""The typed seams of the worker core: what `ModerationPipeline` and the publishers need of the objects handed
to them. Structural (`typing.Protocol`): the implementations do not inherit from these, they only match them.

- `Fetcher`: image bytes for events (`consumer.core.fetch.ImageFetcher`).
- `Decoder`: a batch of image bytes to pictures or to the model's input tensors, bounded in memory
  (`consumer.core.images.ImageDecoder`). Injected into the pipeline beside the fetcher, not found on it.
- `OutputTopic`: a topic a publisher writes to, whichever Kafka client is underneath (both engines use
  `consumer.core.publish.ProducerTopic` on librdkafka; tests an in-memory one). A publisher knows only this.

Each failure that belongs to one input is that input's `InputError` in the returned list, in input order;
anything else raised fails the whole batch.
"""

from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image

from consumer.core.images import DecodePolicy
from consumer.errors import InputError
from schemas import ImagePreprocessing, MemeEvent


class Fetcher(Protocol):
    async def fetch(self, event: MemeEvent) -> bytes:
        """The event's image bytes, or InputError; never any other exception for anything a user can write."""
        ...

    async def fetch_many(self, events: Sequence[MemeEvent]) -> list[bytes | InputError]:
        """`fetch` for a batch: each event's bytes or its InputError, in order."""
        ...

    async def close(self) -> None: ...


class Decoder(Protocol):
    policy: DecodePolicy  # the pipeline reads `enrichment_side`: the side a picture kept for enrichment needs

    async def decode_many(self, blobs: Sequence[bytes], max_pixels: int,
                          target: int | None = None) -> list[Image.Image | InputError]:
        """RGB pictures, decoded no smaller than `target` on their short side (None: full size)."""
        ...

    async def decode_tensors(self, blobs: Sequence[bytes], max_pixels: int,
                             spec: ImagePreprocessing) -> list[np.ndarray | InputError]:
        """The model's float32 [3, S, S] inputs, as `spec` says, built in the decode threads."""
        ...


class OutputTopic(Protocol):
    name: str  # the topic's name, for messages about it


    async def send(self, *, key: bytes | None, value: bytes) -> Awaitable[Any]:
        """Produce one record; awaiting the returned delivery raises if the broker did not take it."""
        ...
