"""Input images in, output files out."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserInputError

PIL_FORMATS = {"webp": "WEBP", "jpg": "JPEG", "png": "PNG"}


def load_image(path: str | os.PathLike, what: str = "image") -> Image.Image:
    """An RGB image, EXIF rotation applied (phone photos are often stored sideways)."""
    try:
        with Image.open(path) as opened:
            return ImageOps.exif_transpose(opened).convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise UserInputError(
            f"The {what} could not be read as an image ({error.__class__.__name__}). Send a PNG, JPEG or WebP file."
        ) from error


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
