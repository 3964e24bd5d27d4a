"""A progressive JPEG decoded at 1/8 scale from only the scans that scale reads (consumer/core/jpeg_scans.py)
gives the same pixels as the whole file, on the shipped memes and on hostile variants of them."""

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from consumer.core.images import decode_image, open_image
from consumer.core.jpeg_scans import count_scans, dc_scale_subset, walk_scans
from consumer.demo.produce import read_semeval
from consumer.errors import InputError
from tests.memes import SEMEVAL

TARGET = 32  # the tests' tiny bundle: a 0.7 MP meme decodes at 1/8 scale
MAX_PIXELS = 40_000_000


def _dev_jpegs() -> list[bytes]:
    blobs = [(SEMEVAL / "images" / m.image_path.name).read_bytes() for m in read_semeval(SEMEVAL / "dev.json")]
    return [b for b in blobs if b[:3] == b"\xff\xd8\xff"]


DEV_JPEGS = _dev_jpegs()


def _pixels(data: bytes, dc_subset: bool) -> np.ndarray:
    return np.asarray(open_image(data, MAX_PIXELS, target=TARGET, gap=1, dc_subset=dc_subset).decode())


def test_the_dev_memes_decode_to_the_same_pixels_from_the_subset_at_one_eighth_scale():
    assert len(DEV_JPEGS) >= 50
    used = 0
    for data in DEV_JPEGS:
        whole = open_image(data, MAX_PIXELS, target=TARGET, gap=1, dc_subset=False)
        if whole.image.decoderconfig[:1] != (8,):
            continue  # a small meme decodes at 1/4: the subset is not used
        subset = dc_scale_subset(data)
        assert subset is not None and len(subset) < 0.7 * len(data)  # it drops most of the file
        prepared = open_image(data, MAX_PIXELS, target=TARGET, gap=1)
        assert prepared.whole is not None and prepared.image.fp.getvalue() == subset  # the decode reads the subset
        np.testing.assert_array_equal(_pixels(data, True), np.asarray(whole.decode()))
        used += 1
    assert used >= 0.9 * len(DEV_JPEGS)


def test_one_walk_gives_the_scan_count_and_the_subset_and_stops_past_the_cap():
    for data in DEV_JPEGS:
        walk = walk_scans(data, stop_after=100)
        assert walk is not None and (walk.scans, walk.subset) == (count_scans(data), dc_scale_subset(data))
        over = walk_scans(data, stop_after=walk.scans - 1)
        assert (over.scans, over.subset) == (walk.scans, None)  # stopped at the scan past the cap
    calls = []
    padded = DEV_JPEGS[0][:2] + b"\xff\xe9\x00\x02" * 640 + DEV_JPEGS[0][2:]  # 640 empty APP9 segments
    assert walk_scans(padded, check=lambda: calls.append(1)).scans == 10
    assert len(calls) >= 10  # the caller's deadline is checked while walking (every 64 segments)


def test_baseline_jpegs_and_other_scales_decode_the_whole_file():
    picture = Image.open(io.BytesIO(DEV_JPEGS[0])).convert("RGB")
    buf = io.BytesIO()
    picture.save(buf, "JPEG", quality=90)  # baseline
    assert dc_scale_subset(buf.getvalue()) is None
    assert open_image(buf.getvalue(), MAX_PIXELS, target=TARGET, gap=1).whole is None
    assert open_image(DEV_JPEGS[0], MAX_PIXELS, target=224, gap=1).whole is None  # 1/2 scale reads the AC scans
    assert open_image(DEV_JPEGS[0], MAX_PIXELS).whole is None  # full resolution


@pytest.mark.parametrize("cut", [0.1, 0.3, 0.6, 0.9])
def test_a_truncated_meme_has_the_same_outcome_kind_or_a_valid_picture(cut):
    data = DEV_JPEGS[1][: int(len(DEV_JPEGS[1]) * cut)]
    try:
        picture = decode_image(data, MAX_PIXELS, target=TARGET, gap=1)
    except InputError as e:
        assert e.kind.value == "image_undecodable"
    else:
        assert picture.mode == "RGB" and min(picture.size) >= TARGET


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), flips=st.integers(1, 40), which=st.integers(0, 9))
def test_corrupted_memes_end_as_a_picture_or_an_input_error(seed, flips, which):
    """Bytes flipped anywhere (markers, scan headers, entropy data): the parser returns a subset or None
    without raising or looping, and the decode ends as a picture or an InputError, never anything else."""
    rng = np.random.default_rng(seed)
    data = bytearray(DEV_JPEGS[which % len(DEV_JPEGS)])
    for at in rng.integers(0, len(data), flips):
        data[at] = int(rng.integers(0, 256))
    data = bytes(data)
    subset = dc_scale_subset(data)
    assert subset is None or len(subset) <= len(data) + 2
    try:
        picture = decode_image(data, MAX_PIXELS, target=TARGET, gap=1)
    except InputError:
        return
    assert picture.mode == "RGB"


def test_a_subset_that_fails_to_decode_falls_back_to_the_whole_file():
    data = DEV_JPEGS[2]
    prepared = open_image(data, MAX_PIXELS, target=TARGET, gap=1)
    assert prepared.whole is not None
    subset = dc_scale_subset(data)
    broken = subset[: len(subset) // 2]  # cut inside the scans: Pillow opens it and refuses to load it
    with pytest.raises(OSError):
        Image.open(io.BytesIO(broken)).load()
    prepared.image = Image.open(io.BytesIO(broken))
    prepared.image.draft("RGB", (TARGET, TARGET))
    np.testing.assert_array_equal(np.asarray(prepared.decode()), _pixels(data, False))


# --- The subset is used only where it is exact (consumer/core/jpeg_scans.py, "DC-scale subset") ---

def _progressive(data: bytes) -> bytes:
    """A dev meme re-encoded by libjpeg's own progressive script (4:2:0; component ids 1 = Y, 2, 3 chroma)."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buf, "JPEG", progressive=True, quality=90)
    return buf.getvalue()


def _without_scans(data: bytes, drop) -> bytes:
    """`data` without the scans whose SOS header `drop(header)` picks (their Huffman tables stay)."""
    from tests.decode_bombs import _segments

    kept = [data[start:end] for start, end, header in _segments(data) if header is None or not drop(header)]
    return data[:2] + b"".join(kept) + b"\xff\xd9"


def _eighth(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (TARGET, TARGET))
    return np.asarray(image.convert("RGB"))


def _is_y_first_ac(header: bytes) -> bool:
    return header[0] == 1 and header[1] == 1 and header[-3] == 1 and header[-1] >> 4 == 0


def test_a_subset_that_would_not_be_exact_falls_back_to_the_whole_file():
    """Y without its first AC scan (Ss = 1, Ah = 0): the whole file still knows Y's AC coefficients 6..63 (and
    1..5 from their refinements), so libjpeg-turbo smooths only AC; a subset would hold Y's DC alone, and
    libjpeg-turbo then smooths the DC too (its DC-only preview): other pixels. The subset is not used."""
    data = _without_scans(_progressive(DEV_JPEGS[0]), _is_y_first_ac)
    # What the previous rule kept (DC scans, the chroma scans, first AC scans): decodes, to other pixels.
    naive = _without_scans(data, lambda h: h[-3] != 0 and h[1] == 1 and not (h[-3] == 1 and h[-1] >> 4 == 0))
    assert (_eighth(naive) != _eighth(data)).sum() > 1000
    assert dc_scale_subset(data) is None
    prepared = open_image(data, MAX_PIXELS, target=TARGET, gap=1)
    assert prepared.whole is None
    np.testing.assert_array_equal(np.asarray(prepared.decode()), _pixels(data, False))


def test_the_first_ac_scan_must_come_before_the_last_scan():
    """When Y's first AC scan is the file's last scan, a last scan whose data ends early would make libjpeg
    smooth the rows after it from the state before it (no AC yet): the whole file decodes instead."""
    whole = _progressive(DEV_JPEGS[0])
    from tests.decode_bombs import _segments

    segments = _segments(whole)
    first_ac = next(i for i, (_, _, h) in enumerate(segments) if h is not None and _is_y_first_ac(h))
    moved = segments[first_ac - 1:first_ac + 1]  # its Huffman table and the scan
    rest = [s for i, s in enumerate(segments) if i not in (first_ac - 1, first_ac)]
    data = whole[:2] + b"".join(whole[a:e] for a, e, _ in rest + moved) + b"\xff\xd9"
    assert dc_scale_subset(whole) is not None and dc_scale_subset(data) is None


@pytest.mark.parametrize("breakage", ["band", "table"])
def test_a_dropped_scan_libjpeg_refuses_makes_the_whole_file_decide(breakage):
    """A scan header libjpeg refuses (a spectral band past 63, an AC table never defined) in a scan the subset
    would drop: the whole file is undecodable, so the subset must not turn it into a picture."""
    data = bytearray(_progressive(DEV_JPEGS[1]))
    from tests.decode_bombs import _segments

    last = [s for s in _segments(bytes(data)) if s[2] is not None][-1]  # Y's last refinement: dropped by the subset
    header_at = last[0] + 4
    if breakage == "band":
        data[header_at + 4] = 64  # Se
    else:
        data[header_at + 2] = (data[header_at + 2] & 0xF0) | 3  # AC table 3: never defined
    data = bytes(data)
    with pytest.raises(OSError):
        Image.open(io.BytesIO(data)).load()  # libjpeg refuses the whole file
    assert dc_scale_subset(data) is None
    with pytest.raises(InputError) as e:
        decode_image(data, MAX_PIXELS, target=TARGET, gap=1)
    assert e.value.kind.value == "image_undecodable"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, 9), drop=st.sets(st.integers(0, 9), max_size=5), gray=st.booleans(),
       subsampling=st.sampled_from([0, 1, 2]))
def test_scans_dropped_from_a_progressive_file_never_make_the_subset_differ_from_the_whole_file(
        which, drop, gray, subsampling):
    """Any selection of libjpeg's progressive scans (4:4:4, 4:2:2, 4:2:0 or grey; a missing DC, first AC or
    refinement scan): where the subset is used, it decodes to the whole file's pixels at 1/8 scale, and a whole
    file libjpeg refuses is refused from its subset too."""
    from tests.decode_bombs import _segments

    picture = Image.open(io.BytesIO(DEV_JPEGS[which])).convert("L" if gray else "RGB")
    buf = io.BytesIO()
    picture.save(buf, "JPEG", progressive=True, quality=90, subsampling=subsampling)
    scans = [i for i, s in enumerate(_segments(buf.getvalue())) if s[2] is not None]
    dropped = {scans[i % len(scans)] for i in drop}
    data = buf.getvalue()
    data = data[:2] + b"".join(data[a:e] for i, (a, e, _) in enumerate(_segments(data)) if i not in dropped) \
        + b"\xff\xd9"
    try:
        whole = _pixels(data, False)
    except InputError:
        whole = None
    prepared = open_image(data, MAX_PIXELS, target=TARGET, gap=1)
    if prepared.whole is None:
        return
    if whole is None:
        with pytest.raises(InputError):
            prepared.decode()
        return
    np.testing.assert_array_equal(np.asarray(prepared.decode()), whole)
