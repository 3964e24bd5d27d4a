"""Synthetic memes with known text, for OCR tests and the OCR character-error-rate benchmark.

Meme captions are white, bold, all-caps sans-serif with a black outline (Impact). Impact is not
redistributable, so we use DejaVu Sans Bold (Debian's fonts-dejavu-core) when present, whose
heavy strokes are the closest free match here, else Pillow's bundled default font, which also
renders at any size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansCondensed-Bold.ttf",
)


def meme_font(size: int) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, str]:
    for path in FONT_CANDIDATES:
        if Path(path).is_file():
            return ImageFont.truetype(path, size), Path(path).stem
    return ImageFont.load_default(size=size), "pillow-default"


def background(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth colour field with blobs and mild noise: busy enough to stand in for a photo."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, phase = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 6.28)
        img[..., c] = 110 + 60 * np.sin(xx / width * fx * 6.28 + phase) * np.cos(yy / height * fy * 6.28)
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, max_width: int) -> list[str]:
    """Greedy word wrap so a caption never runs off the image (as meme generators do)."""
    lines: list[str] = []
    for word in text.split():
        trial = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(trial) <= max_width:
            lines[-1] = trial
        else:
            lines.append(word)
    return lines


def render_meme(
    top: str, bottom: str = "", size: int = 48, width: int = 640, height: int = 480, seed: int = 0
) -> tuple[Image.Image, str]:
    """White outlined caption(s) at the top and bottom; returns the image and the font's name."""
    img = background(width, height, seed)
    draw = ImageDraw.Draw(img)
    font, name = meme_font(size)
    stroke = max(1, size // 12)
    step = int(size * 1.15)
    margin = max(4, size // 3)
    top_lines = wrap(top, font, int(width * 0.94))
    bottom_lines = wrap(bottom, font, int(width * 0.94))
    placed = [(line, margin + i * step) for i, line in enumerate(top_lines)]
    y0 = height - margin - len(bottom_lines) * step
    placed += [(line, y0 + i * step) for i, line in enumerate(bottom_lines)]
    for line, y in placed:
        draw.text(
            (width // 2, y),
            line,
            font=font,
            fill="white",
            anchor="ma",
            stroke_width=stroke,
            stroke_fill="black",
        )
    return img, name


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate: Levenshtein distance / reference length, spaces collapsed, case kept
    out (captions are all caps; OCR case noise is not a reading error for moderation)."""
    ref = " ".join(reference.upper().split())
    hyp = " ".join(hypothesis.upper().split())
    if not ref:
        return float(bool(hyp))
    prev = list(range(len(hyp) + 1))
    for i, rc in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, hc in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (rc != hc))
        prev = cur
    return prev[-1] / len(ref)
