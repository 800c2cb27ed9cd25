"""Output sizes: the reference's aspect-ratio table, custom sizes and the img2img size rule.

FLUX packs 2x2 latent patches on top of the VAE's 8x downsampling, so every side must be a multiple
of 16; diffusers would otherwise silently round down, so we decide the size ourselves.
"""

from __future__ import annotations

from .errors import UserInputError

# 1 megapixel sizes of the reference (replicate/cog-flux ASPECT_RATIOS); "0.25" halves both sides.
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "21:9": (1536, 640),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "4:5": (896, 1088),
    "5:4": (1088, 896),
    "3:4": (896, 1152),
    "4:3": (1152, 896),
    "9:16": (768, 1344),
    "9:21": (640, 1536),
}
MEGAPIXELS = ("1", "0.25")
MAX_IMAGE_SIDE = 1440  # img2img inputs are scaled down to fit 1440x1440, as in the reference
MULTIPLE = 16


def size_for_aspect_ratio(aspect_ratio: str, megapixels: str) -> tuple[int, int]:
    """(width, height) for a named aspect ratio at "1" or "0.25" megapixels."""
    if aspect_ratio not in ASPECT_RATIOS:
        raise UserInputError(f"Unknown aspect_ratio {aspect_ratio!r}; use one of {', '.join(ASPECT_RATIOS)}.")
    if megapixels not in MEGAPIXELS:
        raise UserInputError(f"Unknown megapixels {megapixels!r}; use one of {', '.join(MEGAPIXELS)}.")
    width, height = ASPECT_RATIOS[aspect_ratio]
    if megapixels == "0.25":
        return width // 2, height // 2
    return width, height


def round_to_nearest_16(n: int) -> int:
    """Nearest multiple of 16, halves rounding up (1000 -> 1008, 1016 -> 1024)."""
    return (n + MULTIPLE // 2) // MULTIPLE * MULTIPLE


def custom_size(width: int | None, height: int | None) -> tuple[int, int]:
    """Width and height for aspect_ratio="custom": both required, each rounded to the nearest 16."""
    missing = [name for name, value in (("width", width), ("height", height)) if value is None]
    if missing:
        raise UserInputError(
            f"aspect_ratio is 'custom' but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            "not set: give both width and height (256-1440), or pick a named aspect_ratio."
        )
    return round_to_nearest_16(width), round_to_nearest_16(height)


def size_for_input_image(width: int, height: int) -> tuple[int, int]:
    """img2img/inpainting output size: the input scaled down to fit 1440x1440 (aspect kept), each side
    rounded up to a multiple of 16 as the reference does (so a tiny input never becomes 0 pixels)."""
    scale = min(1.0, MAX_IMAGE_SIDE / width, MAX_IMAGE_SIDE / height)
    scaled = (max(1, round(width * scale)), max(1, round(height * scale)))
    return tuple(-(-side // MULTIPLE) * MULTIPLE for side in scaled)  # type: ignore[return-value]
