"""Decode image bytes safely: pixel cap before the full decode, by content not by file extension."""

import io
import warnings

from PIL import Image, UnidentifiedImageError

from consumer.errors import InputError
from schemas import ErrorKind

# Our own cap (settings.max_image_pixels) is checked first; keep PIL's from firing before it.
Image.MAX_IMAGE_PIXELS = None


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise InputError(
                    f"image is {width}x{height} = {width * height} pixels, over the cap of {max_pixels}",
                    ErrorKind.PIXEL_BOMB,
                )
            image.load()
            return image.convert("RGB")
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise InputError(f"image bytes are not a decodable image ({e})", ErrorKind.IMAGE_UNDECODABLE) from e
