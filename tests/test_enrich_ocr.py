"""OCR reads rendered meme text; inpainting the OCR boxes removes it."""

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from consumer.enrich.inpaint import remove_text, text_mask  # noqa: E402
from consumer.enrich.ocr import OcrConfig, OcrStage  # noqa: E402
from models.features.synthetic import cer, render_meme  # noqa: E402
from schemas.enrichment import Box, OcrLine  # noqa: E402

TOP, BOTTOM = "WHEN THE TESTS PASS", "ON THE FIRST TRY"


@pytest.fixture(scope="module")
def ocr() -> OcrStage:
    return OcrStage(OcrConfig())


def test_reads_rendered_caption(ocr: OcrStage) -> None:
    img, _ = render_meme(TOP, BOTTOM, size=40)
    result = ocr.read([np.asarray(img)])[0]
    assert cer(f"{TOP} {BOTTOM}", result.text.replace("\n", " ")) < 0.1
    assert len(result.lines) >= 2
    top_line = min(result.lines, key=lambda line: line.box.y1)
    assert top_line.box.y1 < img.height / 3  # boxes are in image pixels, top caption at the top
    assert len(top_line.polygon) == 4


def test_inpainting_removes_text(ocr: OcrStage) -> None:
    arr = np.asarray(render_meme(TOP, BOTTOM, size=40)[0])
    before = ocr.read([arr])[0]
    cleaned = remove_text(arr, before.lines)
    after = ocr.read([cleaned])[0]
    assert len(after.text.replace("\n", "")) <= 0.2 * len(before.text.replace("\n", ""))
    # Only the text regions change: the rest of the picture is left as it was.
    untouched = text_mask(arr.shape, before.lines, dilate_px=8) == 0
    assert np.array_equal(cleaned[untouched], arr[untouched])


def test_remove_text_without_lines_is_a_copy() -> None:
    arr = np.zeros((10, 10, 3), np.uint8)
    out = remove_text(arr, [])
    assert np.array_equal(out, arr) and out is not arr


def test_mask_falls_back_to_box_without_polygon() -> None:
    line = OcrLine(text="x", score=0.9, box=Box(x1=2, y1=2, x2=5, y2=5))
    mask = text_mask((10, 10, 3), [line], dilate_px=0)
    assert mask[3, 3] == 255 and mask[8, 8] == 0


def test_ocr_skipped_when_event_has_text(ocr: OcrStage) -> None:
    from consumer.enrich.base import Record

    assert ocr.skip_reason(Record(image=np.zeros((4, 4, 3), np.uint8), text="caption")) is not None
    assert ocr.skip_reason(Record(image=np.zeros((4, 4, 3), np.uint8), text="  ")) is None


def test_cer() -> None:
    assert cer("ABC", "abc") == 0.0
    assert cer("ABCD", "ABD") == 0.25
    assert cer("", "") == 0.0
