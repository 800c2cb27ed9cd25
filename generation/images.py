"""Input images in, output files out."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserInputError

PIL_FORMATS = {"webp": "WEBP", "jpg": "JPEG", "png": "PNG"}
# Inputs are scaled down to 1440x1440 anyway; these caps only stop files that would exhaust memory
# (a 200 MP phone photo still fits, a decompression bomb does not).
MAX_INPUT_PIXELS = 200_000_000
MAX_INPUT_BYTES = 100 * 1024 * 1024


def load_image(path: str | os.PathLike, what: str = "image") -> Image.Image:
    """An RGB image, EXIF rotation applied (phone photos are often stored sideways)."""
    size = os.path.getsize(path)
    if size > MAX_INPUT_BYTES:
        raise UserInputError(f"The {what} is {size / 2**20:.0f} MB; the limit is {MAX_INPUT_BYTES // 2**20} MB.")
    try:
        with Image.open(path) as opened:
            _check_pixels(opened, what)  # before decoding: open() reads only the header
            return ImageOps.exif_transpose(opened).convert("RGB")
    except Image.DecompressionBombError as error:
        raise UserInputError(f"The {what} decodes to too many pixels ({error}).") from error
    except (UnidentifiedImageError, OSError) as error:
        raise UserInputError(
            f"The {what} could not be read as an image ({error.__class__.__name__}). Send a PNG, JPEG or WebP file."
        ) from error


def _check_pixels(image: Image.Image, what: str) -> None:
    width, height = image.size
    if width * height > MAX_INPUT_PIXELS:
        raise UserInputError(
            f"The {what} is {width}x{height} ({width * height / 1e6:.0f} MP); the limit is "
            f"{MAX_INPUT_PIXELS / 1e6:.0f} MP. Send a smaller image: it is scaled to fit 1440x1440 anyway."
        )


def load_mask(path: str | os.PathLike, size: tuple[int, int]) -> Image.Image:
    """The inpainting mask as grayscale at the output size: white repaints, black keeps. NEAREST keeps
    the mask's edges hard instead of inventing gray pixels."""
    mask = load_image(path, what="mask").convert("L")
    return mask.resize(size, Image.Resampling.NEAREST)


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
