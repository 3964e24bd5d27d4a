"""Image decoding: the pixels the model sees are the picture a viewer sees, or the image is rejected.

Property (hypothesis, fixed seed): for generated images across modes (1, L, LA, P with and without
transparency, RGB with and without a tRNS colour key, RGBA, CMYK, I;16), every allow-listed format, with and
without an EXIF orientation tag, `decode_image` returns what an independent reference computes (Pillow's full
decode + `ImageOps.exif_transpose` + the documented conversion, written here in numpy), or raises InputError.

Tolerances: without `target` the reference decodes the same bytes with the same decoder, so any format, lossy
or not, must agree within 1 level per channel (rounding of the alpha blend). With `target` (JPEG draft at
gap 1 (reduced decoding) or 2, then a box reduce keeping both sides >= 2 x target) both are resized to
target x target as the model's preprocessing does, and the mean absolute difference must stay <= 8 levels
of 255, 12 for 1-bit content, which is all edges (worst seen: 6.2 and 9.4, at target 8 on 65 px JPEGs of
quality 40). Reduced decoding at target 8 only: <= 14, 18 for 1-bit (worst seen in 6,000 random cases: 11.4,
15.1; from target 16 on 4.4 and 5.0). A wrong orientation or a wrong conversion differs by 20-60.

More examples: MEMEGUARD_IMAGE_EXAMPLES=5000 .venv/bin/python -m pytest tests/test_images_decode.py
"""

import asyncio
import io
import os
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from consumer.core import images as images_module
from consumer.core.images import DecodePolicy, ImageDecoder, decode_image, open_image
from consumer.errors import InputError
from schemas import ErrorKind

EXAMPLES = int(os.environ.get("MEMEGUARD_IMAGE_EXAMPLES", "250"))
MODES = ["1", "L", "L+trns", "LA", "P", "P+index", "P+alpha", "RGB", "RGB+trns", "RGBA", "CMYK", "I;16", "I;16+trns"]
FORMATS = ["JPEG", "PNG", "WEBP", "WEBP-lossless", "GIF"]
CANNOT = {  # (mode, format) Pillow cannot write
    "JPEG": {"LA", "P", "P+index", "P+alpha", "RGBA", "I;16", "I;16+trns", "L+trns", "RGB+trns"},
    "GIF": {"CMYK", "P+alpha", "RGB+trns", "L+trns", "I;16+trns"},
    "WEBP": {"P+alpha", "RGB+trns", "L+trns", "I;16+trns"},
    "WEBP-lossless": {"P+alpha", "RGB+trns", "L+trns", "I;16+trns"},
    "PNG": {"CMYK"},
}
COMBOS = [(m, f) for f in FORMATS for m in MODES if m not in CANNOT[f]]


# --- generation -------------------------------------------------------------------------------------------


def _content(w: int, h: int, seed: int, noise: int) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric RGB (a flip or rotation is visible) and an alpha plane with 0, 255 and everything between."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    r = xx * 255 // max(w - 1, 1)
    g = yy * 255 // max(h - 1, 1)
    b = np.where((xx < max(w // 3, 1)) & (yy < max(h // 2, 1)), 220, 30)
    rgb = np.stack([r, g, b], axis=-1).astype(np.int64)
    if noise:
        rgb += rng.integers(-noise, noise + 1, rgb.shape)
    alpha = (xx + yy) * 255 // max(w + h - 2, 1)
    alpha = np.where(rng.random((h, w)) < 0.1, rng.choice([0, 255], (h, w)), alpha)
    return np.clip(rgb, 0, 255).astype(np.uint8), alpha.astype(np.uint8)


def make_image(mode: str, fmt: str, w: int, h: int, seed: int, noise: int, orientation: int | None,
               quality: int) -> bytes:
    rgb, alpha = _content(w, h, seed, noise)
    gray = (rgb.astype(np.int64) @ np.array([299, 587, 114]) // 1000).astype(np.uint8)
    kw: dict = {}
    base = mode.split("+")[0]
    if base == "1":
        im = Image.fromarray(gray > 127)
    elif base == "L":
        im = Image.fromarray(gray, "L")
        if mode == "L+trns":
            kw["transparency"] = int(gray[0, 0])
    elif base == "LA":
        im = Image.merge("LA", [Image.fromarray(gray, "L"), Image.fromarray(alpha, "L")])
    elif base == "P":
        im = Image.fromarray(rgb, "RGB").quantize(colors=max(2, seed % 200 + 2))
        n = len(im.getpalette()) // 3
        if mode == "P+index":
            kw["transparency"] = int(np.asarray(im)[0, 0])
        elif mode == "P+alpha":
            kw["transparency"] = bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8))
    elif base == "RGB":
        im = Image.fromarray(rgb, "RGB")
        if mode == "RGB+trns":
            kw["transparency"] = tuple(int(v) for v in rgb[0, 0])
    elif base == "RGBA":
        im = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    elif base == "CMYK":
        k = (255 - rgb.max(axis=-1)).astype(np.uint8)
        im = Image.fromarray(np.dstack([255 - rgb, k]).astype(np.uint8), "CMYK")
    else:  # I;16: the whole 16-bit range, not just its low byte
        values = (gray.astype(np.uint32) * 257 + np.random.default_rng(seed).integers(0, 257, gray.shape)).astype("<u2")
        im = Image.frombytes("I;16", (w, h), values.tobytes())
        if mode == "I;16+trns":
            kw["transparency"] = int(values[0, 0])
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    if fmt == "JPEG":
        kw["quality"] = quality
    if fmt.startswith("WEBP"):
        kw.update(lossless=fmt == "WEBP-lossless", quality=quality)
    buf = io.BytesIO()
    im.save(buf, fmt.split("-")[0], **kw)
    return buf.getvalue()


# --- the independent reference ----------------------------------------------------------------------------


def _blend(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255.0
    return np.floor(rgb.astype(np.float64) * a + 255.0 * (1.0 - a) + 0.5)


def reference(data: bytes) -> np.ndarray:
    """Pillow's full decode (no draft), exif_transpose, then the documented conversion in numpy: HxWx3."""
    im = Image.open(io.BytesIO(data))
    im.load()
    im = ImageOps.exif_transpose(im)
    mode, trns = im.mode, im.info.get("transparency")
    a = np.asarray(im)
    opaque = np.full(a.shape[:2], 255)
    if mode == "1":
        rgb, alpha = np.repeat(np.where(a, 255, 0)[..., None], 3, -1), opaque
    elif mode == "L":
        rgb = np.repeat(a[..., None], 3, -1)
        alpha = np.where(a == trns, 0, 255) if isinstance(trns, int) else opaque
    elif mode.startswith("I"):
        g = np.floor(np.clip(a.astype(np.int64), 0, 65535) / 257 + 0.5)
        rgb = np.repeat(g[..., None], 3, -1)
        alpha = np.where(a == trns, 0, 255) if isinstance(trns, int) else opaque
    elif mode == "LA":
        rgb, alpha = np.repeat(a[..., :1], 3, -1), a[..., 1]
    elif mode == "P":
        pal_mode = im.palette.mode
        pal = np.asarray(im.getpalette(pal_mode), dtype=np.int64).reshape(-1, len(pal_mode))
        pal = np.vstack([pal, np.zeros((256 - len(pal), pal.shape[1]), np.int64)])
        rgb = pal[a][..., :3]
        alpha = pal[a][..., 3] if pal_mode == "RGBA" else opaque.copy()
        if isinstance(trns, int):
            alpha = np.where(a == trns, 0, alpha)
        elif isinstance(trns, bytes):
            alphas = np.concatenate([np.frombuffer(trns, np.uint8), np.full(256, 255, np.uint8)])[:256]
            alpha = alphas[a]
    elif mode == "RGB":
        rgb = a
        alpha = np.where((a == np.asarray(trns)).all(-1), 0, 255) if isinstance(trns, tuple) else opaque
    elif mode == "RGBA":
        rgb, alpha = a[..., :3], a[..., 3]
    elif mode == "CMYK":
        c, k = a[..., :3].astype(np.float64), a[..., 3:].astype(np.float64)
        rgb, alpha = np.floor((255 - c) * (255 - k) / 255 + 0.5), opaque
    else:
        raise AssertionError(f"reference has no rule for mode {mode}")
    return _blend(rgb, alpha).astype(np.uint8)


# --- the property -----------------------------------------------------------------------------------------


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    combo=st.sampled_from(COMBOS),
    w=st.integers(1, 96), h=st.integers(1, 96),
    seed=st.integers(0, 2**16),
    orientation=st.one_of(st.none(), st.integers(1, 8)),
    quality=st.integers(40, 95),
    target=st.one_of(st.none(), st.none(), st.sampled_from([8, 16, 24])),
    gap=st.sampled_from([1, 2]),  # 1: reduced decoding (MEMEGUARD_REDUCED_DECODE), 2: without it
)
def test_decoded_pixels_match_the_reference_or_the_image_is_rejected(combo, w, h, seed, orientation, quality, target,
                                                                     gap):
    mode, fmt = combo
    if fmt == "GIF":
        orientation = None  # GIF has no EXIF
    noise = 0 if target else (seed % 4) * 40
    data = make_image(mode, fmt, w, h, seed, noise, orientation, quality)
    try:
        ours = decode_image(data, max_pixels=10_000_000, target=target, gap=gap)
    except InputError as e:  # rejecting is allowed; only a wrong picture is not
        assert e.kind in (ErrorKind.IMAGE_UNDECODABLE, ErrorKind.PIXEL_BOMB)
        event(f"rejected {e.kind.value}")
        return
    event("decoded, downscaled" if target else "decoded, full size")
    ref = reference(data)
    assert ours.mode == "RGB"
    got = np.asarray(ours).astype(np.int64)
    if target is None:
        assert got.shape == ref.shape, (got.shape, ref.shape)
        diff = np.abs(got - ref)
        assert diff.max() <= 1, (mode, fmt, orientation, int(diff.max()))
    else:
        rh, rw = ref.shape[:2]
        assert min(ours.size) >= min(target, rw, rh) and ours.width <= rw and ours.height <= rh
        if max(rw, rh) > 1.25 * min(rw, rh):  # orientation: a clearly long side stays the long side
            assert (ours.width > ours.height) == (rw > rh), (ours.size, (rw, rh))
        # What the model sees (preprocess squashes to target x target): ours against the reference's.
        seen = np.asarray(ours.resize((target, target), Image.BILINEAR)).astype(np.int64)
        expected = np.asarray(Image.fromarray(ref).resize((target, target), Image.BILINEAR)).astype(np.int64)
        mean = np.abs(seen - expected).mean()
        tolerance = 12 if mode == "1" else 8  # bilevel content is all edges
        if gap == 1 and target == 8:  # the DCT scale leaves 1-2 source pixels per output pixel
            tolerance = 18 if mode == "1" else 14
        assert mean <= tolerance, (mode, fmt, orientation, target, gap, ours.size, (rw, rh), float(mean))


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: f"{c[0]}-{c[1]}")
def test_every_generated_mode_and_format_decodes_rather_than_being_rejected(combo):
    """The property allows a rejection; for these legitimate images a rejection would be over-blocking."""
    mode, fmt = combo
    data = make_image(mode, fmt, 20, 10, 7, 0, None if fmt == "GIF" else 6, 80)
    for target in (None, 4):
        assert decode_image(data, 10_000, target=target).mode == "RGB"


# --- orientation, explicitly ------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_a_viewer_would(orientation):
    """A 2x1 picture, left red and right blue, saved with each orientation: the decode shows the viewer's view."""
    pixels = np.array([[[255, 0, 0], [0, 0, 255]]], np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "PNG", exif=exif.tobytes())
    got = np.asarray(decode_image(buf.getvalue(), 100))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
    assert got.shape == expected.shape and (got == expected).all()
    assert got.shape[:2] == ((1, 2) if orientation <= 4 else (2, 1))


def test_transparent_pixels_are_white_not_black():
    buf = io.BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(buf, "PNG")
    assert np.asarray(decode_image(buf.getvalue(), 100)).min() == 255


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    values = np.array([[0, 257, 32896, 65535]], "<u2")
    buf = io.BytesIO()
    Image.frombytes("I;16", (4, 1), values.tobytes()).save(buf, "PNG")
    assert np.asarray(decode_image(buf.getvalue(), 100))[0, :, 0].tolist() == [0, 1, 128, 255]


# --- formats outside the allow-list -----------------------------------------------------------------------


def _saved(fmt: str, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (16, 16), {"1": 1, "L": 100}.get(mode, (10, 200, 30))).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "ICO", "TGA", "PPM", "PCX", "SGI", "DDS", "JPEG2000", "QOI",
                                 "SPIDER", "ICNS", "EPS", "AVIF"])
def test_formats_outside_the_allow_list_are_undecodable(fmt):
    try:
        data = _saved(fmt, "L" if fmt in ("SPIDER", "EPS") else "RGB")
    except (OSError, ValueError, KeyError) as e:
        pytest.skip(f"this Pillow cannot write {fmt}: {e}")
    Image.open(io.BytesIO(data))  # plain Pillow would open it: the refusal is the allow-list's doing
    with pytest.raises(InputError) as e:
        decode_image(data, 10_000_000)
    assert e.value.kind == ErrorKind.IMAGE_UNDECODABLE
    assert "allowed format" in str(e.value)


def test_psd_header_never_reaches_its_parser():
    psd = b"8BPS\x00\x01" + b"\x00" * 6 + b"\x00\x03" + (16).to_bytes(4, "big") * 2 + b"\x00\x08\x00\x03" + b"\x00" * 64
    with pytest.raises(InputError) as e:
        decode_image(psd, 10_000_000)
    assert e.value.kind == ErrorKind.IMAGE_UNDECODABLE


def test_format_allow_list_setting_narrows_the_formats():
    jpeg = _saved("JPEG")
    assert decode_image(jpeg, 10_000, formats=("JPEG",)).size == (16, 16)
    with pytest.raises(InputError) as e:
        decode_image(jpeg, 10_000, formats=("PNG", "WEBP"))
    assert e.value.kind == ErrorKind.IMAGE_UNDECODABLE


# --- caps before the decode -------------------------------------------------------------------------------


def _gif_descriptors(b: bytes) -> list[int]:
    """Offsets of the GIF image descriptors, by walking the block structure."""
    i = 13 + (3 * 2 ** ((b[10] & 7) + 1) if b[10] & 0x80 else 0)
    out = []
    while b[i] != 0x3B:
        if b[i] == 0x21:
            i += 2
        else:
            out.append(i)
            i += 10 + (3 * 2 ** ((b[i + 9] & 7) + 1) if b[i + 9] & 0x80 else 0) + 1
        while b[i]:
            i += b[i] + 1
        i += 1
    return out


def _two_frame_gif() -> bytearray:
    frames = [Image.fromarray(np.random.default_rng(s).integers(0, 255, (10, 10), dtype=np.uint8), "L") for s in (1, 2)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    return bytearray(buf.getvalue())


def test_gif_first_frame_larger_than_its_screen_is_capped_before_decoding():
    gif = _two_frame_gif()
    first = _gif_descriptors(gif)[0]
    gif[first + 5:first + 9] = (7000).to_bytes(2, "little") * 2  # 49 MP frame on a 10x10 screen
    with pytest.raises(InputError) as e:
        open_image(bytes(gif), 40_000_000)
    assert e.value.kind == ErrorKind.PIXEL_BOMB


def test_later_gif_frames_are_never_decoded():
    gif = _two_frame_gif()
    second = _gif_descriptors(gif)[1]
    gif[second + 5:second + 9] = (65535).to_bytes(2, "little") * 2  # a 4 GP second frame
    assert decode_image(bytes(gif), 40_000_000).size == (10, 10)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_pixel_cap_is_checked_on_the_header_for_every_format(fmt, monkeypatch):
    data = _saved(fmt)
    loaded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: loaded.append(self) or None)
    with pytest.raises(InputError) as e:
        open_image(data, max_pixels=255)
    assert e.value.kind == ErrorKind.PIXEL_BOMB and loaded == []


def test_webp_over_the_cap_is_refused_before_pillow_allocates_its_canvas(monkeypatch):
    from PIL import WebPImagePlugin

    buf = io.BytesIO()
    Image.new("L", (7000, 7000)).save(buf, "WEBP", lossless=True, quality=0, method=0)
    opened = []
    monkeypatch.setattr(WebPImagePlugin._webp, "WebPAnimDecoder", lambda data: opened.append(1) / 0)
    with pytest.raises(InputError) as e:
        open_image(buf.getvalue(), 40_000_000)
    assert e.value.kind == ErrorKind.PIXEL_BOMB and opened == []
    for chunk in (b"VP8X", b"VP8 ", b"VP8L", b"JUNK"):  # a header whose size cannot be read is refused too
        broken = b"RIFF\x00\x00\x00\x00WEBP" + chunk + b"\x00" * 4
        with pytest.raises(InputError) as e:
            open_image(broken, 40_000_000)
        assert e.value.kind == ErrorKind.IMAGE_UNDECODABLE and opened == []


def test_truncated_and_garbage_bytes_are_undecodable():
    jpeg = _saved("JPEG")
    for data in (jpeg[:50], jpeg[: len(jpeg) // 2], b"", b"GIF89a but not", b"\x89PNG\r\n\x1a\n" + b"\0" * 40):
        with pytest.raises(InputError) as e:
            decode_image(data, 10_000)
        assert e.value.kind == ErrorKind.IMAGE_UNDECODABLE, data[:20]


# --- downscaled decode ------------------------------------------------------------------------------------


def test_jpeg_draft_decodes_at_the_smallest_scale_not_below_the_target():
    buf = io.BytesIO()
    Image.fromarray(_content(4000, 3000, 1, 0)[0], "RGB").save(buf, "JPEG")
    prepared = open_image(buf.getvalue(), 40_000_000, target=224)
    assert prepared.cost == 1000 * 750  # DCT scale 1/4 (1/8 would go under 2 x 224): 12 MP never allocated
    image = prepared.decode()
    assert image.size == (1000, 750)  # 750 < 2 x 448: no further reduce
    assert decode_image(buf.getvalue(), 40_000_000).size == (4000, 3000)  # no target: full resolution, as before


def test_png_is_reduced_after_decoding_when_a_target_is_given():
    buf = io.BytesIO()
    Image.fromarray(_content(2000, 1400, 1, 0)[0], "RGB").save(buf, "PNG")
    image = decode_image(buf.getvalue(), 40_000_000, target=224)
    assert image.size == (667, 467)  # reduce(3): both sides still >= 2 x 224


# --- bounded concurrency and the pixel budget -------------------------------------------------------------


def test_decodes_run_in_waves_under_the_pixel_budget_and_none_is_dropped(monkeypatch):
    state = {"now": 0, "peak": 0, "pixels": 0, "peak_pixels": 0}
    lock = threading.Lock()
    real = images_module.PreparedImage.decode

    def tracked(self):
        with lock:
            state["now"] += 1
            state["pixels"] += self.cost
            state["peak"] = max(state["peak"], state["now"])
            state["peak_pixels"] = max(state["peak_pixels"], state["pixels"])
        time.sleep(0.02)
        try:
            return real(self)
        finally:
            with lock:
                state["now"] -= 1
                state["pixels"] -= self.cost

    monkeypatch.setattr(images_module.PreparedImage, "decode", tracked)
    blobs = []
    for side in (100, 100, 100, 100, 100, 100, 300, 100):  # 10k-pixel images and one 90k image over the budget
        buf = io.BytesIO()
        Image.new("RGB", (side, side), (1, 2, 3)).save(buf, "PNG")
        blobs.append(buf.getvalue())
    decoder = ImageDecoder(DecodePolicy(concurrency=3, batch_pixel_budget=25_000))
    results = asyncio.run(decoder.decode_many(blobs + [b"not an image"], 1_000_000))
    assert [r.size for r in results[:-1]] == [(s, s) for s in (100,) * 6 + (300, 100)]
    assert isinstance(results[-1], InputError) and results[-1].kind == ErrorKind.IMAGE_UNDECODABLE
    assert state["peak"] <= 2  # 3 slots, but the budget admits only two 10k images at once
    assert state["peak_pixels"] <= 90_000  # the big one ran alone
    assert decoder.budget.peak <= 25_000


def test_pipeline_decode_stage_uses_the_fetchers_decoder_and_the_models_input_size(tmp_path):
    from types import SimpleNamespace

    from consumer.core.fetch import FetchPolicy, ImageFetcher
    from consumer.core.pipeline import ModerationPipeline, RawRecord, _Item
    from schemas import ImagePreprocessing

    runtime = SimpleNamespace(manifest=SimpleNamespace(image=ImagePreprocessing(size=32)))
    fetcher = ImageFetcher(FetchPolicy(allowed_schemes=frozenset({"base64"}), file_root=tmp_path, max_bytes=10**7,
                                       timeout_s=1.0, max_redirects=0, decode=DecodePolicy(formats=("PNG",))))
    pipe = ModerationPipeline(runtime=runtime, cache=None, fetcher=fetcher, decoder=ImageDecoder(fetcher.policy.decode),
                              policy=None,
                              max_event_bytes=10**6, max_image_pixels=10**7)
    big, jpeg = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (640, 480), (9, 9, 9)).save(big, "PNG")
    Image.new("RGB", (64, 48)).save(jpeg, "JPEG")
    items = [_Item(RawRecord(None, b"{}", "t", 0, n)) for n in range(2)]
    items[0].image_bytes, items[1].image_bytes = big.getvalue(), jpeg.getvalue()
    asyncio.run(pipe._decode(items))
    assert items[0].image.size == (92, 69) and items[0].outcome is None  # reduce(7) keeps both sides >= 2 x 32
    assert items[1].image is None and items[1].outcome.dead_letter.error_kind == ErrorKind.IMAGE_UNDECODABLE
    pipe.enricher = lambda image, text: None  # enrichment reads the picture too: both sides kept >= 2 x 1024
    asyncio.run(pipe._decode(items[:1]))
    assert items[0].image.size == (640, 480)
    huge = io.BytesIO()
    Image.new("RGB", (6400, 4200), (9, 9, 9)).save(huge, "PNG")
    items[0].image_bytes, pipe.max_image_pixels = huge.getvalue(), 40_000_000
    asyncio.run(pipe._decode(items[:1]))
    assert items[0].image.size == (3200, 2100)
