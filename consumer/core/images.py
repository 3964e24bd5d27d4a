"""Decode image bytes into the one RGB picture the model sees, in bounded memory.

Every step happens before the pixels are decoded, on the header only:

- **Formats**: only the allow-listed Pillow plugins are tried (`MEMEGUARD_IMAGE_FORMATS`; JPEG (and MPO, a
  multi-picture JPEG), PNG (and APNG), WebP, GIF), by content, never by file extension. Anything else (BMP,
  TIFF, ICO, PSD, ...) is `image_undecodable` without its parser ever running.
- **Scan cap** (JPEG): a progressive JPEG's scans each walk every block of the frame, however few bytes they
  hold, so decode work grows with scans x pixels, not with file size (`consumer/core/jpeg_scans.py`). A JPEG
  with more than `max_scans` scans (`MEMEGUARD_JPEG_MAX_SCANS`, default 100; a normal file has 1 to about 10) is
  `image_undecodable`, counted on its markers before anything is decoded.
- **Pixel cap**: width × height of what will be decoded against `max_pixels` (`pixel_bomb`). Animated GIF,
  APNG and WebP: only the first frame is decoded, into one canvas of the checked size; later frames are never
  read, so a frame count does not multiply memory. Pillow's own guard (`Image.MAX_IMAGE_PIXELS`) is left at
  its default as a second line; when it fires it is a `pixel_bomb` too.
- **Downscaling** (only when the caller passes `target`, e.g. the model's input side): JPEG is decoded with
  `Image.draft` at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides >= gap x `target`; every format
  is then box-reduced by the largest integer factor that keeps both sides >= 2 x `target` (Pillow's own
  `reducing_gap` for `thumbnail`: the model's resize still does the final, antialiased step). The gap is 2 by
  default; **reduced decoding** (`MEMEGUARD_REDUCED_DECODE`, on by default, `DecodePolicy.reduced`) takes gap 1
  for the model's input: the smallest DCT scale >= the input side, so a 0.7 MP JPEG meme decodes at 1/2
  scale, a quarter of the pixels (the scores move by less than the tolerance bench/bench_decode.py checks on
  the dev split). At 1/8 scale a progressive JPEG (every shipped meme is one) decodes from only the scans
  that scale reads (`consumer/core/jpeg_scans.py`): the same pixels in about half the time. PNG, WebP and GIF
  have no reduced decode: they decode in full, as before.
  Without `target` the picture is decoded at full resolution, as before.
- **Memory**: the conversion runs in strips, so a decode holds the source, the output and one strip; with
  `target` the output is the reduced picture. `ImageDecoder` bounds how many decodes run at once and how
  many source pixels are in flight (`batch_pixel_budget`): a batch over it decodes in waves, nothing is
  dropped for it, and an image alone over the budget decodes alone.

Decoding itself is bounded in time: **a deadline per image** (`MEMEGUARD_DECODE_DEADLINE_MS`,
`DecodePolicy.deadline_ms`) of CPU time spent by the thread that opens and decodes it (`time.thread_time`: a
busy machine slows a decode down without making it hostile, so wall time would refuse good images under load;
Pillow's header parsing counts too, a Python loop over a file's markers or chunks). Python cannot stop a thread
inside Pillow's C code, so the decode stops itself: Pillow reads the header, and feeds the decoder its input in
blocks, from a file object that checks the deadline before each read; past it the read raises and the decode
ends as `image_undecodable` ("decode exceeded its deadline"). No thread is left running, nothing is abandoned,
and the worker needs no exit for it: the lane that decoded it goes on to the next image. libjpeg suspends when
a block is used up, so the work done between two checks is what the scans in one block cost: never more than the
scan cap's worth, each bounded by the pixel cap. A JPEG
with more than `_FEW_SCANS` scans is fed in blocks of `_JPEG_READ_BLOCK` bytes instead of Pillow's 64 KiB, so
with the cap raised a block of tiny scans still holds only dozens of them; a normal file is fed as before, and
pays nothing for it. PNG and GIF are checked per chunk too; their decode work, and WebP's (decoded in one call),
is linear in the pixel cap, so they need no finer check.

Then the documented conversion to RGB (the property test in tests/test_images_decode.py holds it to an
independent reference):

- EXIF orientation (tags 2-8) is applied as a viewer would, with `ImageOps.exif_transpose`'s mapping (on the
  converted picture; the test compares against `exif_transpose` itself).
- `1`, `L`, `RGB`, `YCbCr`: plain conversion. `CMYK`: Pillow's (255-C)(255-K)/255 (ICC profiles are ignored).
- 16-bit grayscale (`I;16*`, `I`): each value v in 0..65535 becomes round(v / 257) (not Pillow's clipping).
- Transparency (an alpha band, a palette with alpha, a PNG tRNS colour key) is composited on **white**:
  out = c·a/255 + 255·(1 − a/255).
- Any other mode is `image_undecodable`: never a silently wrong picture.
"""

import asyncio
import io
import os
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np
from PIL import Image

from consumer.core.jpeg_scans import count_scans, walk_scans
from consumer.core.malloc import trim
from consumer.core.preprocess import image_to_tensor
from consumer.core.settings_groups import DecodeSettingsGroup
from consumer.errors import InputError
from schemas import ErrorKind, ImagePreprocessing

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")  # the formats whose conversion is defined and tested
_PILLOW_FORMATS = {"JPEG": ("JPEG",), "PNG": ("PNG",), "WEBP": ("WEBP",), "GIF": ("GIF",)}
WHITE = (255, 255, 255)
# Downscaled decodes keep both sides >= REDUCING_GAP x target, so the model's own resize still does most of
# the work (as Pillow's `reducing_gap`; 2 is what `Image.thumbnail` uses with `draft`).
REDUCING_GAP = 2
REDUCED_GAP = 1  # reduced decoding: the smallest scale that still covers the target
_PLAIN = {"1", "L", "RGB", "RGBX", "YCbCr", "CMYK"}
_ALPHA = {"LA", "La", "PA", "RGBA", "RGBa"}
_GRAY16 = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_STRIP_PIXELS = 1 << 20
_TRIM_FROM_PIXELS = 4_000_000
DEFAULT_MAX_SCANS = 100  # JPEG scans (SOS segments); libjpeg's own progressive script writes 10 (6 for grayscale)
DEFAULT_DEADLINE_MS = 5000  # CPU ms per decode; a 40 MP PNG or progressive JPEG decodes in ~1 s on one core
# A JPEG with more scans than a normal file (libjpeg's script: 10) reaches libjpeg in blocks this large, the
# deadline checked before each (Pillow's 64 KiB can hold a thousand tiny scans). Normal files keep Pillow's blocks:
# on the dev memes 4 KiB blocks cost up to ~0.5 ms more per 1/8-scale decode (of ~3.5 ms).
_FEW_SCANS = 16
_CHECKED_READ = 1024  # reads this large (decoder blocks, chunk bodies) always check the deadline
_JPEG_READ_BLOCK = 4096
_ORIENTATION = 0x0112  # EXIF Orientation -> the transposition a viewer applies (as ImageOps.exif_transpose)
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


@dataclass(frozen=True)
class DecodePolicy:
    formats: tuple[str, ...] = ALLOWED_FORMATS
    concurrency: int = 4  # decodes running at once (threads)
    batch_pixel_budget: int = 64_000_000  # decoded pixels in flight at once; larger batches decode in waves
    # With enrichment or an explainer the picture is kept for them too: downscaled only while both sides stay
    # >= 2 x this (OCR, faces, objects and the explainer all work at or below it), so kept memory is bounded.
    enrichment_side: int = 1024
    reduced: bool = True  # JPEG at the smallest DCT scale >= target (gap 1) instead of >= 2 x target
    scan_subset: bool = True  # a progressive JPEG at 1/8 scale decodes from the scans that scale reads
    max_scans: int = DEFAULT_MAX_SCANS  # a JPEG with more scans is image_undecodable (module docstring)
    deadline_ms: int = DEFAULT_DEADLINE_MS  # CPU time one decode may take before it ends as image_undecodable

    @property
    def gap(self) -> int:
        return REDUCED_GAP if self.reduced else REDUCING_GAP

    @classmethod
    def from_settings(cls, s: DecodeSettingsGroup) -> "DecodePolicy":
        return cls(formats=tuple(s.image_formats), concurrency=s.decode_concurrency,
                   batch_pixel_budget=s.batch_pixel_budget, reduced=s.reduced_decode,
                   scan_subset=s.jpeg_scan_subset, max_scans=s.jpeg_max_scans, deadline_ms=s.decode_deadline_ms)

    def decode(self, data: bytes, max_pixels: int, target: int | None = None) -> Image.Image:
        """Bytes -> RGB picture under every bound of this policy (formats, scans, pixels, deadline): the one
        call for readers outside the worker's batches (the review page, `dataset build`, `calibrate`)."""
        return open_image(data, max_pixels, formats=self.formats, target=target, gap=REDUCING_GAP,
                          dc_subset=self.scan_subset, max_scans=self.max_scans,
                          deadline_ms=self.deadline_ms).decode()


class _Deadline:
    """The CPU time one image may spend, from `open_image` (Pillow's header parsing, a Python loop over the
    file's markers or chunks, counts too) to the end of its decode, measured on the thread that runs them.
    A decode on another thread than its header checks starts the clock again there (`time.thread_time` is
    per thread)."""

    def __init__(self, ms: int) -> None:
        self.ms = ms
        self.thread = threading.get_ident()
        self.started = time.thread_time()

    def on_this_thread(self) -> None:
        if threading.get_ident() != self.thread:
            self.thread, self.started = threading.get_ident(), time.thread_time()

    def check(self) -> None:
        if (time.thread_time() - self.started) * 1000 > self.ms:
            raise InputError(f"image decode exceeded its deadline of {self.ms} ms of CPU time "
                             "(MEMEGUARD_DECODE_DEADLINE_MS): a file this costly to decode is refused",
                             ErrorKind.IMAGE_UNDECODABLE)


class _Input(io.BytesIO):
    """The bytes Pillow reads an image from, checking the image's deadline (module docstring) before each read
    of a decoder's block and before every 64th small read (header parsing reads a JPEG a marker, even a byte,
    at a time: reading the CPU clock on each doubled the time to open a meme)."""

    def __init__(self, data: bytes, deadline: _Deadline) -> None:
        super().__init__(data)
        self.check = deadline.check
        self.small_reads = 0

    def read(self, size: int | None = -1, /) -> bytes:
        if size is None or size < 0 or size >= _CHECKED_READ:
            self.check()
        else:
            self.small_reads += 1
            if not self.small_reads & 63:
                self.check()
        return _bytes_read(self, size)


_bytes_read = io.BytesIO.read  # called directly: a meme's header is ~35 reads, and super() adds up


class PreparedImage:
    """An image whose header passed every check; `decode()` decodes and converts it (CPU and memory)."""

    def __init__(self, image: Image.Image, target: int | None, whole: Callable[[], Image.Image] | None = None,
                 deadline: _Deadline | None = None) -> None:
        self.image = image
        self.deadline = deadline or _Deadline(DEFAULT_DEADLINE_MS)
        self.target = target
        self.whole = whole  # when `image` reads a JPEG's scan subset (jpeg_scans): opens the whole file, if it fails
        self.format = image.format
        # Pixels the decode will allocate (after draft). A WebP counts 4 times: libwebp's canvas, the frame
        # bytes Pillow copies out of it and the image itself are alive at once (measured: ~15 bytes a pixel).
        self.cost = image.size[0] * image.size[1] * (4 if image.format == "WEBP" else 1)

    def decode(self) -> Image.Image:
        try:
            self.deadline.on_this_thread()
            image, self.image = self.image, None  # the source goes as soon as the picture is converted
            image = _load(image, self.whole)
            self.whole = None
            orientation = image.getexif().get(_ORIENTATION, 1)
            # The box reduce keeps REDUCING_GAP whatever the draft's gap: below it, a box filter visibly departs
            # from the bilinear resize training used, and for PNG/WebP/GIF it saves nothing measurable (the
            # decode itself is the cost; bench/bench_decode.py).
            factor = min(image.size) // (self.target * REDUCING_GAP) if self.target else 1
            rgb = to_rgb(image, reduce=max(factor, 1))
            del image
            # Orientation on the (smaller) converted picture: same pixels, one source-sized copy less.
            if orientation in _TRANSPOSE:
                rgb = rgb.transpose(_TRANSPOSE[orientation])
            return rgb
        except InputError:
            raise
        except Image.DecompressionBombError as e:
            raise InputError(f"image is a decompression bomb ({e})", ErrorKind.PIXEL_BOMB) from e
        except MemoryError:
            raise
        except Exception as e:  # truncated data, broken chunks, bad EXIF: whatever Pillow raises on bad bytes
            raise InputError(f"image bytes are not a decodable {self.format} image ({type(e).__name__}: {e})",
                             ErrorKind.IMAGE_UNDECODABLE) from e


def open_image(data: bytes, max_pixels: int, *, formats: Sequence[str] = ALLOWED_FORMATS,
               target: int | None = None, gap: int = REDUCING_GAP, dc_subset: bool = True,
               max_scans: int = DEFAULT_MAX_SCANS, deadline_ms: int = DEFAULT_DEADLINE_MS) -> PreparedImage:
    """Identify, check the format, the scan cap (JPEG) and the pixel cap, and prepare a downscaled decode that
    ends at `deadline_ms` of CPU time; decodes nothing.

    With `target`, a JPEG's DCT scale keeps both sides >= `gap` x `target` (module docstring); at 1/8 scale a
    progressive JPEG decodes from its DC-scale scans only (`dc_subset`, same pixels)."""
    if gap not in (REDUCED_GAP, REDUCING_GAP):
        raise ValueError(f"gap must be {REDUCED_GAP} or {REDUCING_GAP}, not {gap}")
    plugins = [p for f in formats for p in _PILLOW_FORMATS.get(f.upper(), ())]
    if "WEBP" in plugins and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        # Pillow's WebP plugin allocates the whole canvas when it opens the file: check the header first.
        size = _webp_canvas(data)
        if size is None:
            raise InputError("WebP header has no readable canvas size", ErrorKind.IMAGE_UNDECODABLE)
        if size[0] * size[1] > max_pixels:
            raise InputError(f"image is {size[0]}x{size[1]} = {size[0] * size[1]} pixels, over the cap of "
                             f"{max_pixels}", ErrorKind.PIXEL_BOMB)
    deadline = _Deadline(deadline_ms)
    try:
        image = Image.open(_Input(data, deadline), formats=plugins)
    except Image.DecompressionBombError as e:
        raise InputError(f"image is a decompression bomb ({e})", ErrorKind.PIXEL_BOMB) from e
    except MemoryError:
        raise
    except InputError:  # the deadline, while Pillow parsed the header
        raise
    except Exception as e:  # UnidentifiedImageError, or a header the plugin chokes on
        raise InputError(f"image bytes are not an image in an allowed format ({', '.join(formats)}): "
                         f"{type(e).__name__}: {e}", ErrorKind.IMAGE_UNDECODABLE) from e
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise InputError(f"image is {width}x{height} = {width * height} pixels, over the cap of {max_pixels}",
                         ErrorKind.PIXEL_BOMB)
    if width < 1 or height < 1:
        image.close()
        raise InputError(f"image is {width}x{height}: no pixels", ErrorKind.IMAGE_UNDECODABLE)
    if image.format in ("JPEG", "MPO"):
        return _prepare_jpeg(image, data, target, gap, dc_subset, max_scans, deadline)
    return PreparedImage(image, target, deadline=deadline)


def _prepare_jpeg(image: Image.Image, data: bytes, target: int | None, gap: int, dc_subset: bool, max_scans: int,
                  deadline: _Deadline) -> PreparedImage:
    """The DCT scale (`draft`), the scan cap and, at 1/8 scale, the scan subset of an opened JPEG. A
    progressive JPEG at 1/8 scale has its markers walked once for both the scan count and the subset; the
    subset is then fed to the same opened image (its headers are the file's own bytes), so nothing is
    parsed twice."""
    side = target * gap if target else None
    if side:
        try:
            image.draft("RGB", (side, side))  # DCT scaling; keeps both sides >= gap x target
        except Exception as e:
            image.close()
            raise InputError(f"JPEG header is not decodable ({type(e).__name__}: {e})",
                             ErrorKind.IMAGE_UNDECODABLE) from e
    walk = None
    if side and dc_subset and image.format == "JPEG" and image.decoderconfig[:1] == (8,) \
            and image.info.get("progressive"):
        walk = walk_scans(data, stop_after=max_scans, check=deadline.check)
    scans = walk.scans if walk is not None else _scans_bound(data, max_scans)
    if scans > max_scans:
        image.close()
        raise InputError(f"JPEG has more than {max_scans} scans (SOS segments; a normal file has at most about "
                         "10): its decode work would grow with every scan (MEMEGUARD_JPEG_MAX_SCANS)",
                         ErrorKind.IMAGE_UNDECODABLE)
    if scans > _FEW_SCANS:
        image.decodermaxblock = _JPEG_READ_BLOCK
    if walk is None or walk.subset is None:
        return PreparedImage(image, target, deadline=deadline)
    image.fp = _Input(walk.subset, deadline)
    return PreparedImage(image, target, deadline=deadline,
                         whole=partial(_reopened, data, side, image.decodermaxblock, deadline))


def _scans_bound(data: bytes, max_scans: int) -> int:
    """The scans libjpeg would read, exactly enough to hold them to `max_scans`: `bytes.count` of the SOS
    marker is an upper bound (every SOS is such a byte pair; ~30 us for a 25 KB meme); only a file over the
    cap by that count is walked marker by marker (`count_scans`), so bytes inside metadata segments or after
    the end of the image do not count."""
    bound = data.count(b"\xff\xda")
    return bound if bound <= max_scans else count_scans(data, stop_after=max_scans)


def _reopened(data: bytes, side: int, block: int, deadline: _Deadline) -> Image.Image:
    """The whole JPEG file opened again at the same scale, for a scan subset that failed to decode."""
    image = Image.open(_Input(data, deadline), formats=["JPEG"])
    image.draft("RGB", (side, side))
    image.decodermaxblock = block
    return image


def _load(image: Image.Image, whole: Callable[[], Image.Image] | None) -> Image.Image:
    """`image` decoded; a scan subset that fails to decode is not the input's fault: the whole file decides
    (but a decode past its deadline is over: the whole file would only spend more)."""
    try:
        image.load()
        return image
    except (MemoryError, InputError):
        raise
    except Exception:
        if whole is None:
            raise
        image = whole()
        image.load()
        return image


def _webp_canvas(data: bytes) -> tuple[int, int] | None:
    """Canvas size from a WebP file's first chunk (VP8X extended, VP8 lossy or VP8L lossless), or None."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def decode_image(data: bytes, max_pixels: int, *, formats: Sequence[str] = ALLOWED_FORMATS,
                 target: int | None = None, gap: int = REDUCING_GAP, max_scans: int = DEFAULT_MAX_SCANS,
                 deadline_ms: int = DEFAULT_DEADLINE_MS) -> Image.Image:
    """Bytes -> RGB picture (module docstring), or InputError (image_undecodable / pixel_bomb)."""
    return open_image(data, max_pixels, formats=formats, target=target, gap=gap, max_scans=max_scans,
                      deadline_ms=deadline_ms).decode()


def to_rgb(image: Image.Image, reduce: int = 1) -> Image.Image:
    """The documented conversion of a decoded picture to RGB (then box-reduced by `reduce`), in strips: the
    memory it adds to the source is the output plus one strip, whatever the mode."""
    mode = image.mode
    if mode not in _PLAIN | _ALPHA | _GRAY16 | {"P"}:
        raise InputError(f"image mode {mode!r} has no defined conversion to RGB", ErrorKind.IMAGE_UNDECODABLE)
    if mode == "RGB" and "transparency" not in image.info and reduce == 1:
        return image
    width, height = image.size
    out = Image.new("RGB", (-(-width // reduce), -(-height // reduce)))
    rows = max(1, _STRIP_PIXELS // width // reduce) * reduce  # a multiple of `reduce`: strips reduce as a whole
    for top in range(0, height, rows):
        strip = _strip_to_rgb(image.crop((0, top, width, min(height, top + rows))))
        out.paste(strip.reduce(reduce) if reduce > 1 else strip, (0, top // reduce))
    return out


def _strip_to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    transparency = image.info.get("transparency")
    if mode in _GRAY16:  # round(v / 257), 0..65535 -> 0..255
        values = np.asarray(image).astype(np.int64)
        gray = Image.fromarray(((np.clip(values, 0, 65535) * 2 + 257) // 514).astype(np.uint8), "L")
        if not isinstance(transparency, int):
            return gray.convert("RGB")
        return _on_white(gray.convert("RGB"), Image.fromarray(np.where(values == transparency, 0, 255).astype(np.uint8)))
    if mode == "P" and (transparency is not None or image.palette.mode == "RGBA"):
        return _on_white(*_split(image.convert("RGBA")))
    if mode in _ALPHA:
        return _on_white(*_split(image.convert("RGBA")))  # un-premultiplies La / RGBa
    if transparency is not None and mode in ("1", "L", "RGB"):  # a PNG tRNS colour key
        return _on_white(*_split(image.convert("RGBA")))
    return image if mode == "RGB" else image.convert("RGB")


def _split(rgba: Image.Image) -> tuple[Image.Image, Image.Image]:
    return rgba.convert("RGB"), rgba.getchannel("A")


def _on_white(rgb: Image.Image, alpha: Image.Image) -> Image.Image:
    background = Image.new("RGB", rgb.size, WHITE)
    background.paste(rgb, (0, 0), alpha)
    return background


def _decode_and_trim(prepared: PreparedImage, finish: Callable[[Image.Image], object] | None = None):
    """Decode (then `finish` the picture, e.g. into a tensor), then hand a large decode's freed source back to
    the OS. glibc keeps freed blocks in the decoding thread's arena, so without this each decode thread keeps
    its own high-water mark (measured on the hostile-images bench: peak RSS 1.5 GB instead of ~0.75 GB)."""
    try:
        image = prepared.decode()
        return finish(image) if finish is not None else image
    finally:
        if prepared.cost >= _TRIM_FROM_PIXELS:
            trim()


class TensorDecoder(Protocol):
    """Turns one header-checked image (`open_image` ran: format allow-list, pixel cap, draft) into the model's
    input, float32 [3, S, S] normalised as the bundle's `ImagePreprocessing` says, or raises InputError.

    Extension point for a GPU decoder (not implemented: no GPU on the machines this was written on, and
    consumer/ never imports torch). nvJPEG through nvImageCodec (`nvidia.nvimgcodec`, no torch) would
    implement this for JPEG and hand everything else to `PillowTensorDecoder`; pass it as
    `ImageDecoder(policy, tensor_decoder=...)`, selected only when its import and a CUDA device are there.
    It must keep the CPU-side guarantees: the header checks stay in `open_image` (they run before it), EXIF
    orientation and the documented RGB conversion (module docstring) give the same picture, and its own
    errors on bad bytes become `InputError(kind=image_undecodable)`. OpenCV's CUDA module is no candidate:
    its Python API has no GPU image decode, only resize/convert after a CPU decode.
    """

    name: str

    def decode(self, prepared: PreparedImage, spec: ImagePreprocessing) -> np.ndarray: ...


class PillowTensorDecoder:
    """The CPU path: `PreparedImage.decode` (draft, convert once, box-reduce) then one resize and the
    normalisation straight into CHW (`consumer.core.preprocess.image_to_tensor`)."""

    name = "pillow"

    def decode(self, prepared: PreparedImage, spec: ImagePreprocessing) -> np.ndarray:
        return _decode_and_trim(prepared, lambda image: image_to_tensor(image, spec))


class _PixelBudget:
    """At most `total` decoded pixels in flight; one image larger than the budget runs alone. Reserved and
    released inside the decode threads (a thread's lane holds at most one reservation, so none can wait on
    itself)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.peak = 0
        self._changed = threading.Condition()

    @contextmanager
    def reserve(self, pixels: int):
        pixels = min(pixels, self.total)
        with self._changed:
            self._changed.wait_for(lambda: self.used + pixels <= self.total)
            self.used += pixels
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._changed:
                self.used -= pixels
                self._changed.notify_all()


class ImageDecoder:
    """Decodes a batch's images with bounded threads and a budget of decoded pixels (waves, never drops):
    to RGB pictures (`decode_many`, for enrichment and the explainer too) or straight to the model's input
    tensors in the decode threads (`decode_tensors`, through `tensor_decoder`).

    A batch runs as at most `concurrency` lanes (and no more than cores), one thread task each, that take
    the next image until none is left (header checks, budget, decode, conversion): a few thread hand-offs per
    batch instead of two per image, which under load cost more event-loop and GIL time than a reduced JPEG
    decode itself."""

    def __init__(self, policy: DecodePolicy | None = None, tensor_decoder: TensorDecoder | None = None) -> None:
        self.policy = policy or DecodePolicy()
        self.tensor_decoder = tensor_decoder or PillowTensorDecoder()
        self.budget = _PixelBudget(self.policy.batch_pixel_budget)

    async def decode(self, data: bytes, max_pixels: int, target: int | None = None) -> Image.Image:
        return _raise_or_return((await self._lanes([data], max_pixels, target, _decode_and_trim))[0])

    async def decode_tensor(self, data: bytes, max_pixels: int, spec: ImagePreprocessing) -> np.ndarray:
        """Bytes -> the model's float32 [3, S, S] input, decoded at reduced scale when the policy says so."""
        return _raise_or_return((await self._lanes([data], max_pixels, spec.size, self._tensor_of(spec)))[0])

    def _tensor_of(self, spec: ImagePreprocessing) -> Callable:
        return lambda prepared: self.tensor_decoder.decode(prepared, spec)

    def _one(self, data: bytes, max_pixels: int, target: int | None, run: Callable):
        # Reduced decoding is for the model's input only: a picture kept for enrichment or the explainer
        # (target >= enrichment_side) keeps their documented >= 2 x enrichment_side.
        gap = self.policy.gap if target is None or target < self.policy.enrichment_side else REDUCING_GAP
        prepared = open_image(data, max_pixels, formats=self.policy.formats, target=target, gap=gap,
                              dc_subset=self.policy.scan_subset, max_scans=self.policy.max_scans,
                              deadline_ms=self.policy.deadline_ms)
        with self.budget.reserve(prepared.cost):
            return run(prepared)

    async def _lanes(self, blobs: Sequence[bytes], max_pixels: int, target: int | None,
                     run: Callable) -> list:
        """Each blob's result or the exception it raised, in order."""
        results: list = [None] * len(blobs)
        todo = iter(range(len(blobs)))
        lock = threading.Lock()

        def lane() -> None:
            while True:
                with lock:  # the next image, whichever lane is free first
                    n = next(todo, None)
                if n is None:
                    return
                try:
                    results[n] = self._one(blobs[n], max_pixels, target, run)
                except Exception as e:  # noqa: BLE001 (kept per image; the caller decides what propagates)
                    results[n] = e

        # No more lanes than cores: decodes are CPU-bound (the GIL is released while they run), and more
        # threads than cores only add GIL hand-offs and compete with the inference threads.
        lanes = min(self.policy.concurrency, len(blobs), os.cpu_count() or 1)
        await asyncio.gather(*(asyncio.to_thread(lane) for _ in range(lanes)))
        return results

    async def _batch(self, blobs: Sequence[bytes], max_pixels: int, target: int | None, run: Callable) -> list:
        results = await self._lanes(blobs, max_pixels, target, run)
        for r in results:  # as before: an InputError is that image's outcome, anything else fails the batch
            if isinstance(r, BaseException) and not isinstance(r, InputError):
                raise r
        return results

    async def decode_many(self, blobs: Sequence[bytes], max_pixels: int,
                          target: int | None = None) -> list[Image.Image | InputError]:
        return await self._batch(blobs, max_pixels, target, _decode_and_trim)

    async def decode_tensors(self, blobs: Sequence[bytes], max_pixels: int,
                             spec: ImagePreprocessing) -> list[np.ndarray | InputError]:
        """`decode_many` for a model-only batch: each result is already the model's input tensor (feed them to
        `BundleRuntime.predict` in place of pictures), so conversion and normalisation run in the decode
        threads, not in the inference call."""
        return await self._batch(blobs, max_pixels, spec.size, self._tensor_of(spec))


def _raise_or_return(result):
    if isinstance(result, BaseException):
        raise result
    return result
