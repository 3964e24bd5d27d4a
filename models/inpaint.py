"""Text-removal augmentation: inpaint overlaid text out of a meme before the image encoder.

Text regions come from OpenCV's MSER detector (OCR lives in the consumer's enrichment and `models/`
must not import it); boxes shaped like glyphs are kept, merged into a dilated mask and inpainted
with Telea's method, so the image encoder sees the picture rather than the caption.
"""

import cv2
import numpy as np
from PIL import Image

MAX_SIDE = 512  # MSER and inpainting cost grows with pixels; text boxes survive this downscale


def text_mask(gray: np.ndarray) -> np.ndarray:
    """uint8 mask (255 = text) of glyph-like MSER regions of a grayscale image."""
    h, w = gray.shape
    mser = cv2.MSER_create()
    mser.setMinArea(max(8, (h * w) // 20000))
    mser.setMaxArea(max(64, (h * w) // 50))
    _, boxes = mser.detectRegions(gray)
    mask = np.zeros_like(gray)
    for x, y, bw, bh in boxes:
        # Glyphs are small, not too elongated, and shorter than ~1/6 of the image (captions, not objects).
        if bh < 6 or bh > h / 6 or bw > 3 * bh or bh > 6 * bw:
            continue
        mask[y : y + bh, x : x + bw] = 255
    return cv2.dilate(mask, np.ones((3, 3), np.uint8), iterations=2)


def inpaint_text(image: Image.Image) -> Image.Image:
    rgb = np.asarray(image.convert("RGB"))
    scale = min(1.0, MAX_SIDE / max(rgb.shape[:2]))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (int(rgb.shape[1] * scale), int(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    mask = text_mask(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    if not mask.any():
        return Image.fromarray(rgb)
    return Image.fromarray(cv2.inpaint(rgb, mask, 3, cv2.INPAINT_TELEA))
