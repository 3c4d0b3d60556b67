"""Image files in: decoded, upright, shrunk to a working size, as lightness and alpha arrays.

Reads PNG, JPEG, BMP, GIF (first frame), WebP and anything else Pillow opens, of any size and mode (grayscale,
RGB, RGBA, palette, 16-bit), upright per its EXIF orientation. What is wrong with an input is an ImageError: one
line, without the file name, for the caller to print beside it.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stages.core.errors import PipelineError

# Far above any photo of a digit (a 24-megapixel camera frame is 24 million), far below what would exhaust memory:
# a crafted PNG of a few kilobytes can claim billions of pixels.
MAX_IMAGE_PIXELS = 40_000_000
# Images are shrunk to this long side before float processing: a digit is at most 20 pixels tall in the end, so
# this keeps even a digit covering a twentieth of a large photo at 50 pixels, and bounds the memory per image.
WORKING_SIZE = 1024
# ITU-R 601-2 luma, the weights Pillow's own convert("L") uses.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)

BLANK = "blank image: no ink stands out from the background"


class ImageError(PipelineError):
    """One input image cannot be classified; the message says why, without the file name."""


def load_image(source: str | os.PathLike | bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image file (a path) or its bytes, upright per EXIF; raise ImageError for anything unreadable."""
    if isinstance(source, bytes):
        if not source:
            raise ImageError("empty: no image data")
        opened = io.BytesIO(source)
    else:
        opened = Path(source)
        if not opened.exists():
            raise ImageError("file not found")
        if opened.is_dir():
            raise ImageError("is a folder, not an image file")
    # Pillow only warns between its own limit and twice that; an image that large is refused here all the same.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(opened) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageError(f"{width}x{height} pixels is over the limit of {max_pixels:,} pixels")
                image.load()
                return ImageOps.exif_transpose(image)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageError(f"over Pillow's pixel limit, refused as a possible decompression bomb ({error})") from None
        except UnidentifiedImageError:
            raise ImageError("not an image Pillow can read (PNG, JPEG, BMP, GIF, WebP, ...)") from None
        except PermissionError:
            raise ImageError("permission denied") from None
        # Pillow's decoders report a damaged file with any of these, depending on the format.
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            raise ImageError(f"corrupt or truncated image ({error})") from None


def shrink(image: Image.Image, longest_side: int = WORKING_SIZE) -> Image.Image:
    """A copy no longer than `longest_side` on either side; modes are normalised first so resizing can filter."""
    if image.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB" if image.mode != "1" else "L")
    elif image.mode in ("P", "PA"):
        # Palette resizing is nearest-neighbour only, and the palette may carry transparency.
        has_alpha = image.mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif image.mode.startswith("I") or image.mode == "F":
        image = image.convert("F")
    if max(image.size) > longest_side:
        image = image.copy()
        # thumbnail() premultiplies alpha while filtering, so transparent pixels' colour does not bleed in.
        image.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
    return image


def image_to_arrays(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Lightness in [0, 1] and alpha in [0, 1], or None for alpha when every pixel is opaque."""
    if image.mode == "F":
        # 16- and 32-bit images have no fixed white level: use their own range.
        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        return (values - low) / (high - low) if high > low else np.zeros_like(values), None
    if image.mode in ("LA", "La", "RGBA", "RGBa") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255
        alpha = rgba[..., 3]
        return rgba[..., :3] @ LUMA_WEIGHTS, (alpha if alpha.min() < 1 else None)
    if image.mode == "L":
        return np.asarray(image, dtype=np.float32) / 255, None
    return (np.asarray(image.convert("RGB"), dtype=np.float32) / 255) @ LUMA_WEIGHTS, None



def to_png_image(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(array[..., 0] * 255).astype(np.uint8), mode="L")
