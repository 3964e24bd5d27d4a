"""Decode work is bounded by time, not only by pixels (issue 27 item 1): a JPEG over the scan cap is refused
before it is decoded, and a decode past its CPU deadline stops itself as `image_undecodable`, in the worker
(a fault test with a real worker process), on the review page and in `dataset build`."""

import asyncio
import base64
import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from consumer.core.images import DecodePolicy, ImageDecoder, decode_image, open_image
from consumer.core.jpeg_scans import count_scans
from consumer.errors import InputError
from consumer.settings import WorkerSettings
from schemas import DeadLetter, ErrorKind, ImagePreprocessing, MemeEvent
from tests.decode_bombs import scan_bomb
from tests.test_jpeg_scans import DEV_JPEGS

MAX_PIXELS = 40_000_000
UNBOUNDED = 10**9


def _cpu(fn) -> tuple[object, float]:
    """fn()'s result (or the exception it raised) and the CPU time this thread spent in it."""
    started = time.thread_time()
    try:
        result: object = fn()
    except Exception as e:  # noqa: BLE001
        result = e
    return result, time.thread_time() - started


def test_a_jpeg_over_the_scan_cap_is_refused_before_it_is_decoded():
    bomb = scan_bomb(2000, 2000, kept_by_subset=False)  # 170 KB; ~10 s of decoding at 1/8 scale or full
    assert count_scans(bomb) == 2006
    for target in (None, 32, 224):
        error, cpu = _cpu(lambda t=target: decode_image(bomb, MAX_PIXELS, target=t, gap=1))
        assert isinstance(error, InputError) and error.kind == ErrorKind.IMAGE_UNDECODABLE
        assert "more than 100 scans" in str(error) and cpu < 0.5


def test_the_scan_cap_is_a_setting_and_normal_memes_are_far_below_it():
    assert {count_scans(d) for d in DEV_JPEGS} == {10}  # libjpeg's progressive script
    assert DecodePolicy.from_settings(WorkerSettings(jpeg_max_scans=9)).max_scans == 9
    open_image(DEV_JPEGS[0], MAX_PIXELS, max_scans=10).decode()
    with pytest.raises(InputError, match="more than 9 scans"):
        open_image(DEV_JPEGS[0], MAX_PIXELS, max_scans=9)


def test_scan_markers_inside_metadata_or_after_the_image_do_not_count_and_junk_does_not_hide_scans():
    """The cheap count (0xFF 0xDA byte pairs) is only an upper bound; over the cap, the markers are walked as
    libjpeg walks them: an APP segment full of those byte pairs and bytes after EOI do not count, and junk
    bytes between segments (libjpeg skips them with a warning) do not hide a scan."""
    meme = DEV_JPEGS[0]
    app = b"\xff\xda" * 300
    padded = meme[:2] + b"\xff\xe9" + (len(app) + 2).to_bytes(2, "big") + app + meme[2:] + b"\xff\xda" * 300
    assert count_scans(padded) == 10
    np.testing.assert_array_equal(np.asarray(decode_image(padded, MAX_PIXELS, max_scans=10)),
                                  np.asarray(decode_image(meme, MAX_PIXELS)))
    bomb = scan_bomb(64, 200, kept_by_subset=False)
    junk = bomb.replace(b"\xff\xc4", b"\x00junk\xff\xc4")  # before every Huffman table and repeated scan
    Image.open(io.BytesIO(junk)).load()  # libjpeg still decodes every scan
    assert count_scans(junk) == count_scans(bomb) == 206
    with pytest.raises(InputError, match="more than 100 scans"):
        decode_image(junk, MAX_PIXELS)


@pytest.mark.parametrize("kept_by_subset, target", [(True, 32), (False, None), (False, 1024)])
def test_a_decode_past_its_deadline_stops_itself_as_undecodable(kept_by_subset, target):
    """Scan cap lifted: the decode runs until its CPU deadline, then ends as image_undecodable within one
    input block (at most ~65 of these scans) of it, not after the whole file's work (tens of seconds)."""
    bomb = scan_bomb(4000, 12_000 if kept_by_subset else 3000, kept_by_subset)
    error, cpu = _cpu(lambda: decode_image(bomb, MAX_PIXELS, target=target, gap=1, max_scans=UNBOUNDED,
                                           deadline_ms=200))
    assert isinstance(error, InputError) and error.kind == ErrorKind.IMAGE_UNDECODABLE, error
    assert "exceeded its deadline of 200 ms" in str(error)
    assert 0.2 <= cpu < 3.0


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_png_and_gif_decodes_are_checked_against_the_deadline_per_input_chunk(fmt):
    """Their work is linear in the pixel cap, but the same input checks the deadline: a 1 ms deadline stops a
    noisy 2000 x 2000 picture (about 100 ms to decode) within a chunk or two."""
    noise = np.random.default_rng(0).integers(0, 256, (2000, 2000), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise, "L").save(buf, fmt)
    decode_image(buf.getvalue(), MAX_PIXELS)
    with pytest.raises(InputError, match="exceeded its deadline of 1 ms"):
        decode_image(buf.getvalue(), MAX_PIXELS, deadline_ms=1)


def test_the_deadline_covers_header_parsing_too():
    """Pillow parses a JPEG's markers in a Python loop: 1 MB of empty APP1 segments (no pixels, no scans) cost
    about a second to open, 10 MB (the default size cap) ten. The deadline bounds that as well."""
    meme = DEV_JPEGS[0]
    padded = meme[:2] + b"\xff\xe1\x00\x02" * 250_000 + meme[2:]
    error, cpu = _cpu(lambda: open_image(padded, MAX_PIXELS, deadline_ms=50))
    assert isinstance(error, InputError) and error.kind == ErrorKind.IMAGE_UNDECODABLE, error
    assert "exceeded its deadline of 50 ms" in str(error) and cpu < 0.5


def test_the_deadline_covers_the_scan_walk_past_the_header():
    """Empty segments between two scans, where Pillow's header parse never looks: at 1/8 scale the scan cap and
    subset walk every marker in Python (jpeg_scans.walk_scans), and the deadline bounds that walk too, before
    anything is decoded."""
    meme = DEV_JPEGS[0]
    second_scan = meme.index(b"\xff\xda", meme.index(b"\xff\xda") + 2)
    padded = meme[:second_scan] + b"\xff\xe9\x00\x02" * 300_000 + meme[second_scan:]
    error, cpu = _cpu(lambda: open_image(padded, MAX_PIXELS, target=32, gap=1, deadline_ms=50))
    assert isinstance(error, InputError) and error.kind == ErrorKind.IMAGE_UNDECODABLE, error
    assert "exceeded its deadline of 50 ms" in str(error) and cpu < 0.5


def test_the_deadline_is_per_image_in_a_batch_and_a_setting():
    """One runaway image in a batch of the worker's decoder: it alone is image_undecodable, the others decode,
    and the lanes are free afterwards (no thread is left decoding it)."""
    policy = DecodePolicy.from_settings(WorkerSettings(decode_deadline_ms=200, jpeg_max_scans=UNBOUNDED))
    assert (policy.deadline_ms, policy.max_scans) == (200, UNBOUNDED)
    bomb = scan_bomb(4000, 12_000)
    blobs = [DEV_JPEGS[0], bomb, DEV_JPEGS[1], DEV_JPEGS[2]]
    before = threading.active_count()
    results = asyncio.run(ImageDecoder(policy).decode_tensors(blobs, MAX_PIXELS, ImagePreprocessing(size=32)))
    assert isinstance(results[1], InputError) and "deadline" in str(results[1])
    assert all(isinstance(r, np.ndarray) and r.shape == (3, 32, 32) for i, r in enumerate(results) if i != 1)
    assert threading.active_count() <= before + 1  # asyncio's executor threads idle, none stuck in a decode


def test_a_normal_meme_decodes_well_within_the_default_deadline():
    for data in DEV_JPEGS[:5]:
        _, cpu = _cpu(lambda d=data: decode_image(d, MAX_PIXELS))
        assert cpu * 1000 < DecodePolicy().deadline_ms / 10


def test_the_review_page_image_is_decoded_under_the_same_bounds():
    from consumer.review.app import to_png

    assert Image.open(io.BytesIO(to_png(DEV_JPEGS[0], MAX_PIXELS, DecodePolicy()))).format == "PNG"
    with pytest.raises(InputError, match="more than 100 scans"):
        to_png(scan_bomb(2000, 2000), MAX_PIXELS, DecodePolicy())
    error, cpu = _cpu(lambda: to_png(scan_bomb(4000, 3000, kept_by_subset=False), MAX_PIXELS,
                                     DecodePolicy(max_scans=UNBOUNDED, deadline_ms=200)))
    assert isinstance(error, InputError) and "deadline" in str(error) and cpu < 3.0


def test_dataset_build_keeps_only_images_that_decode_under_the_workers_bounds():
    from consumer.learning.dataset import _image_name

    assert _image_name(DEV_JPEGS[0], "ab" * 32, DecodePolicy(), MAX_PIXELS) == "ab" * 16 + ".jpg"
    with pytest.raises(InputError, match="more than 100 scans"):
        _image_name(scan_bomb(2000, 2000), "ab" * 32, DecodePolicy(), MAX_PIXELS)
    with pytest.raises(InputError, match="deadline"):
        _image_name(scan_bomb(4000, 3000, kept_by_subset=False), "ab" * 32,
                    DecodePolicy(max_scans=UNBOUNDED, deadline_ms=200), MAX_PIXELS)


@pytest.mark.faults
@pytest.mark.integration
def test_worker_dead_letters_a_record_past_the_decode_deadline_and_the_partition_goes_on(
        stack, worker_factory, topics, tmp_path: Path):
    """A real worker, the scan cap lifted and a 300 ms deadline: a 0.7 MB JPEG that would decode for about a
    minute (its scans are ones the 1/8-scale subset keeps) becomes one image_undecodable dead letter, and the
    records after it on its partition become verdicts; every offset is committed; the worker never exits."""
    from tests.faults.audit import OutputReader, audit, report
    from tests.faults.records import VERDICT, mixed
    from tests.faults.workers import fault_worker
    from tests.kafka_helpers import committed_offsets, produce_raw

    records = mixed(24, "deadline", dup_frac=0.0, poison_frac=0.0, seed=27)
    bomb_id = "deadline-bomb"
    event = MemeEvent(event_id=bomb_id, post_id="post-bomb", image_b64=base64.b64encode(scan_bomb(4000, 11_000)).decode())
    value = event.model_dump_json().encode()
    records.records.insert(2, (records.records[0][0], value))  # the first record's key: the same partition
    records.expected[bomb_id], records.values[bomb_id] = ErrorKind.IMAGE_UNDECODABLE.value, value
    worker = fault_worker(worker_factory, tmp_path, MEMEGUARD_DECODE_DEADLINE_MS="300",
                          MEMEGUARD_JPEG_MAX_SCANS=str(UNBOUNDED), MEMEGUARD_MAX_IMAGE_BYTES="1500000").start()
    reader = OutputReader(stack.bootstrap, topics.output, topics.dlq)
    last = produce_raw(stack.bootstrap, topics.input, records.records)
    reader.wait_for(records.ids, timeout_s=45, log=worker.log)
    counts = audit("decode_past_its_deadline", records, reader.outputs, allow_duplicates=False)
    report(counts)
    reader.close()
    [dead] = [o.out for o in reader.outputs if isinstance(o.out, DeadLetter)]
    assert "exceeded its deadline of 300 ms" in dead.message
    assert counts.verdicts == sum(v == VERDICT for v in records.expected.values()) == 24
    expected = {p: o + 1 for p, o in last.items()}
    deadline = time.monotonic() + 15
    while committed_offsets(stack.bootstrap, topics.group, topics.input) != expected:
        assert time.monotonic() < deadline, committed_offsets(stack.bootstrap, topics.group, topics.input)
        time.sleep(0.2)
    assert worker.stop() == 0, worker.log()
