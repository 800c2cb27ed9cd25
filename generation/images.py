"""Input images in, output files out."""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserInputError

PIL_FORMATS = {"webp": "WEBP", "jpg": "JPEG", "png": "PNG"}
# Inputs are scaled down to 1440x1440 anyway; these caps only stop files that would exhaust memory
# (a 200 MP phone photo still fits, a decompression bomb does not).
MAX_INPUT_PIXELS = 200_000_000
MAX_INPUT_BYTES = 100 * 1024 * 1024
# PIL's own bomb check refuses anything over 179 MP inside open(), before ours could name the limit; with
# its limit at ours, our message wins and PIL's error (at twice ours) remains a backstop.
Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, MAX_INPUT_PIXELS)
MASK_ASPECT_TOLERANCE = 0.01  # a mask may be resized to the image, never stretched to another shape
# Modes whose values go past 255, which Pillow's convert("RGB") would clip (see to_rgb).
WIDE_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
# Pillow's decoders parse untrusted bytes with a dozen formats' parsers, and a malformed header surfaces as
# whatever that parser hit (a PPM header as ValueError, a bad TIFF tag type as TypeError or KeyError, a short
# file as EOFError or struct.error). For a file the user sent, each of them means "not a readable image".
DECODER_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError, EOFError, SyntaxError, struct.error)


def load_image(path: str | os.PathLike, what: str = "image") -> Image.Image:
    """An RGB image, EXIF rotation applied (phone photos are often stored sideways)."""
    size = os.path.getsize(path)
    if size > MAX_INPUT_BYTES:
        raise UserInputError(f"The {what} is {size / 2**20:.0f} MB; the limit is {MAX_INPUT_BYTES // 2**20} MB.")
    try:
        with Image.open(path) as opened:
            _check_pixels(opened, what)  # before decoding: open() reads only the header
            return to_rgb(ImageOps.exif_transpose(opened))
    except UserInputError:
        raise
    except Image.DecompressionBombError as error:
        raise UserInputError(
            f"The {what} decodes to too many pixels; the limit is {MAX_INPUT_PIXELS / 1e6:.0f} MP. Send a smaller "
            "image: it is scaled to fit 1440x1440 anyway."
        ) from error
    except (UnidentifiedImageError, *DECODER_ERRORS) as error:
        raise UserInputError(
            f"The {what} could not be read as an image ({error.__class__.__name__}). Send a PNG, JPEG or WebP file."
        ) from error


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB with the image's real tones. Pillow's own convert("RGB") clips wider modes at 255, so a 16-bit
    grey PNG (I;16, 0..65535) would come out white and a float image (F, usually 0..1) black: those are scaled
    to 0..255 first. Palette, alpha, CMYK and 1-bit images convert as Pillow does (alpha dropped)."""
    if image.mode in WIDE_MODES:
        values = np.asarray(image, dtype=np.float64)
        values = values * (255.0 / _full_scale(image.mode, values))
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def _full_scale(mode: str, values: np.ndarray) -> float:
    """The value that means white: 65535 for 16-bit modes; for I (32-bit) and F, read from the data, since
    files store 8-bit, 16-bit or 0..1 ranges in them."""
    if mode.startswith("I;16"):
        return 65535.0
    peak = float(values.max()) if values.size else 0.0
    for full in (1.0, 255.0, 65535.0):
        if peak <= full:
            return full
    return peak


def _check_pixels(image: Image.Image, what: str) -> None:
    width, height = image.size
    if width * height > MAX_INPUT_PIXELS:
        raise UserInputError(
            f"The {what} is {width}x{height} ({width * height / 1e6:.0f} MP); the limit is "
            f"{MAX_INPUT_PIXELS / 1e6:.0f} MP. Send a smaller image: it is scaled to fit 1440x1440 anyway."
        )


def load_mask(path: str | os.PathLike, size: tuple[int, int], image_size: tuple[int, int] | None = None) -> Image.Image:
    """The inpainting mask as grayscale at the output size: white repaints, black keeps. NEAREST keeps
    the mask's edges hard instead of inventing gray pixels. With `image_size` (the input image's), a mask
    of another aspect ratio is refused (`check_mask_aspect`); one of another size is resized."""
    mask = load_image(path, what="mask").convert("L")
    if image_size is not None:
        check_mask_aspect(mask.size, image_size)
    return mask.resize(size, Image.Resampling.NEAREST)


def check_mask_aspect(mask_size: tuple[int, int], image_size: tuple[int, int]) -> None:
    """Stretching a mask of another shape onto the image would repaint a region the user did not paint,
    so the aspect ratios must agree: within 1%, or within what rounding one pixel per side of the smaller
    of the two explains (a mask scaled down to 33x50 pixels for a 100x150 image is still that image's)."""
    (mask_w, mask_h), (image_w, image_h) = mask_size, image_size
    small_w, small_h = min(mask_size, image_size, key=lambda wh: wh[0] * wh[1])
    tolerance = max(MASK_ASPECT_TOLERANCE, 1 / small_w + 1 / small_h)
    if abs(mask_w * image_h / (mask_h * image_w) - 1) > tolerance:
        raise UserInputError(
            f"The mask is {mask_w}x{mask_h} but the image is {image_w}x{image_h}: their aspect ratios differ "
            f"({mask_w / mask_h:.3g} vs {image_w / image_h:.3g}), so stretching the mask onto the image would "
            "repaint the wrong region. Send a mask with the image's aspect ratio, ideally its exact size "
            "(white = repaint, black = keep)."
        )


def fit_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def output_name(index: int, output_format: str) -> str:
    return f"out-{index}.{output_format}"


def save_outputs(
    images: Sequence[tuple[int, Image.Image]], output_format: str, quality: int, folder: Path
) -> list[Path]:
    """Write (index, image) pairs as out-{index}.{ext}; indices keep gaps where images were dropped."""
    paths = []
    for index, image in images:
        path = folder / output_name(index, output_format)
        options = {} if output_format == "png" else {"quality": quality, "optimize": True}
        image.save(path, format=PIL_FORMATS[output_format], **options)
        paths.append(path)
    return paths
