"""Loaders and the one preprocessing implementation."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.data import harmful_targets, load_dataset, load_hateful_jsonl, multi_hot
from models.errors import DataError
from models.inpaint import inpaint_text, text_mask
from models.paths import semeval_dir
from models.preprocess import TextTokenizer, image_to_array, load_image
from schemas.manifest import ImagePreprocessing, TextPreprocessing
from schemas.techniques import TECHNIQUES

needs_data = pytest.mark.skipif(not (semeval_dir() / "dev.json").is_file(), reason="shared SemEval data absent")


@pytest.fixture
def hateful_set(tmp_path: Path) -> Path:
    """A small generated Hateful Memes set (the real one is not shipped here)."""
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(6):
        Image.new("RGB", (40 + i, 30), (i * 40, 10, 200)).save(tmp_path / "img" / f"{i:05d}.png")
        rows.append({"id": f"{i:05d}", "img": f"img/{i:05d}.png", "label": i % 2, "text": f"meme number {i}"})
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_hateful_jsonl_loader_reads_binary_labels_and_resolves_images(hateful_set: Path) -> None:
    memes = load_hateful_jsonl(hateful_set)
    assert [m.harmful for m in memes] == [0, 1, 0, 1, 0, 1]
    assert all(m.image.is_file() and m.labels == () for m in memes)
    assert harmful_targets(memes).tolist() == [0.0, 1.0] * 3
    assert load_dataset(str(hateful_set))[0].text == "meme number 0"


def test_hateful_jsonl_loader_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 1, "img": "a.png", "label": 0, "text": "x"}\n{"oops": true}\n')
    with pytest.raises(DataError, match="Line 2"):
        load_hateful_jsonl(path)


@needs_data
def test_semeval_dev_loads_with_labels_in_official_order() -> None:
    memes = load_dataset("dev")
    y = multi_hot(memes)
    assert len(memes) == 63 and y.shape == (63, len(TECHNIQUES))
    assert harmful_targets(memes) is None
    assert y[:, TECHNIQUES.index("Presenting Irrelevant Data (Red Herring)")].sum() == 0


@needs_data
def test_images_decode_by_content_not_extension() -> None:
    meme = load_dataset("dev")[0]
    assert meme.image.suffix == ".png"
    assert load_image(meme.image).mode == "RGB"


def test_image_preprocessing_is_squash_bilinear_then_normalise() -> None:
    spec = ImagePreprocessing(size=4, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    im = Image.new("RGB", (8, 2), (255, 0, 128))
    x = image_to_array(im, spec)
    assert x.shape == (3, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], [(1 - 0.5) / 0.25, (0 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.25], atol=1e-6)


def test_text_tokenizer_pads_to_longest_and_truncates() -> None:
    from models.encoders.hub import minilm_dir

    tok = TextTokenizer(minilm_dir() / "tokenizer.json", TextPreprocessing(max_length=6))
    ids, mask = tok(["short", "a much longer text that will surely be truncated"])
    assert ids.dtype == torch.int64 and ids.shape == (2, 6)
    assert mask[0].tolist() == [1, 1, 1, 0, 0, 0] and mask[1].sum() == 6


def test_inpainting_removes_text_like_regions() -> None:
    from PIL import ImageDraw

    im = Image.new("RGB", (200, 120), (90, 140, 200))
    ImageDraw.Draw(im).text((20, 50), "LOADED LANGUAGE HERE", fill=(255, 255, 255))
    gray = np.asarray(im.convert("L"))
    assert text_mask(gray).any()
    out = np.asarray(inpaint_text(im)).astype(int)
    before = np.abs(np.asarray(im).astype(int) - [90, 140, 200]).sum()
    after = np.abs(out - [90, 140, 200]).sum()
    assert after < before * 0.5
