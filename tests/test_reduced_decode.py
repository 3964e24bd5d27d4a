"""Reduced decoding (MEMEGUARD_REDUCED_DECODE) and decoding straight into the model's tensor.

The property test in tests/test_images_decode.py holds reduced decoding's pixels to the reference; here: the
scale it picks, the setting, the tensor path (bit-identical normalisation, errors in place, bounds kept) and
the scores of the tests' tiny bundle on shipped memes (within the tolerance bench/bench_decode.py states).
"""

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from consumer.core.images import REDUCED_GAP, REDUCING_GAP, DecodePolicy, ImageDecoder, decode_image, open_image
from consumer.core.preprocess import image_to_tensor, images_to_batch
from consumer.core.runtime import BundleRuntime
from consumer.errors import InputError
from consumer.settings import WorkerSettings
from schemas import ErrorKind, ImagePreprocessing

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "semeval2021_task6"


def _jpeg(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, height // 50), max(1, width // 50), 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((width, height), Image.BILINEAR).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def test_reduced_decoding_takes_the_smallest_dct_scale_that_covers_the_target():
    data = _jpeg(1000, 700)  # a typical meme: 0.7 MP
    assert open_image(data, 40_000_000, target=224, gap=REDUCED_GAP).cost == 500 * 350  # 1/2: 350 >= 224
    assert open_image(data, 40_000_000, target=224, gap=REDUCING_GAP).cost == 1000 * 700  # 1/2 would be < 448
    big = _jpeg(4000, 3000)
    prepared = open_image(big, 40_000_000, target=224, gap=REDUCED_GAP)
    assert prepared.cost == 500 * 375  # 1/8 (1/16 does not exist; 375 >= 224)
    assert prepared.decode().size == (500, 375)
    with pytest.raises(ValueError):
        open_image(data, 40_000_000, target=224, gap=3)


def test_the_setting_switches_it_and_it_is_on_by_default(monkeypatch):
    assert DecodePolicy().reduced and DecodePolicy.from_settings(WorkerSettings()).gap == REDUCED_GAP
    monkeypatch.setenv("MEMEGUARD_REDUCED_DECODE", "false")
    policy = DecodePolicy.from_settings(WorkerSettings())
    assert not policy.reduced and policy.gap == REDUCING_GAP


def test_image_to_tensor_is_bit_identical_to_the_training_formula():
    spec = ImagePreprocessing(size=24)
    rng = np.random.default_rng(1)
    for mode, shape in (("RGB", (31, 45, 3)), ("L", (40, 17))):
        image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
        # models/preprocess.py's image_to_array, written out (that module imports torch)
        x = np.asarray(image.convert("RGB").resize((24, 24), Image.BILINEAR), dtype=np.float32) / 255.0
        x = (x - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
        expected = np.ascontiguousarray(x.transpose(2, 0, 1))
        got = image_to_tensor(image, spec)
        assert got.dtype == np.float32 and got.flags.c_contiguous and np.array_equal(got, expected), mode


def test_decode_tensors_gives_the_models_input_and_errors_in_place():
    spec = ImagePreprocessing(size=32)
    jpeg, bomb = _jpeg(640, 480), io.BytesIO()
    Image.new("L", (3000, 3000)).save(bomb, "PNG")
    decoder = ImageDecoder(DecodePolicy(concurrency=2, batch_pixel_budget=1_000_000))
    results = asyncio.run(decoder.decode_tensors([jpeg, b"not an image", bomb.getvalue()], 4_000_000, spec))
    expected = image_to_tensor(decode_image(jpeg, 4_000_000, target=32, gap=REDUCED_GAP), spec)
    assert results[0].shape == (3, 32, 32) and np.array_equal(results[0], expected)
    assert isinstance(results[1], InputError) and results[1].kind == ErrorKind.IMAGE_UNDECODABLE
    assert isinstance(results[2], InputError) and results[2].kind == ErrorKind.PIXEL_BOMB  # cap before decode
    assert decoder.budget.peak <= 1_000_000
    # A picture kept for enrichment (target >= enrichment_side) keeps >= 2 x that side, reduced or not.
    large = _jpeg(4400, 4400)
    kept = asyncio.run(decoder.decode(large, 40_000_000, target=decoder.policy.enrichment_side))
    assert kept.size == (4400 // 2, 4400 // 2)


def test_a_batch_mixes_pictures_and_pre_decoded_tensors():
    spec = ImagePreprocessing(size=16)
    picture = Image.new("RGB", (40, 30), (200, 10, 10))
    batch = images_to_batch([picture, image_to_tensor(picture, spec)], spec)
    assert batch.shape == (2, 3, 16, 16) and np.array_equal(batch[0], batch[1])
    with pytest.raises(ValueError, match="pre-decoded image tensor"):
        images_to_batch([np.zeros((3, 8, 8), np.float32)], spec)


def test_reduced_decoding_moves_the_tiny_bundles_scores_within_the_tolerance(tiny_bundle: Path):
    records = json.loads((DEV / "dev.json").read_text())[:24]
    blobs = [(DEV / "images" / r["image"]).read_bytes() for r in records]
    texts = [r.get("text") or "" for r in records]
    runtime = BundleRuntime.load(tiny_bundle)
    spec = runtime.manifest.image

    def scores(gap: int) -> np.ndarray:
        tensors = [image_to_tensor(decode_image(b, 40_000_000, target=spec.size, gap=gap), spec) for b in blobs]
        return runtime.predict(tensors, texts).technique_probs

    off, on = scores(REDUCING_GAP), scores(REDUCED_GAP)
    delta = np.abs(on - off)
    assert delta.max() <= 0.05  # MAX_SCORE_DELTA in bench/bench_decode.py
    assert delta.max() > 0  # the pixels did change: the comparison is not vacuous
