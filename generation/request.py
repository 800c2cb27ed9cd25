"""What a prediction asks for, and the plan it resolves to (mode, size, seed, steps, strength).

All input rules of docs/DESIGN.md ("Behaviour rules") that need no model live here, testable without one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from . import sizes
from .errors import UserInputError
from .seeds import resolve_seed

Mode = Literal["txt2img", "img2img", "inpaint"]
MODELS = ("dev", "schnell")
OUTPUT_FORMATS = ("webp", "jpg", "png")
# T5 prompt length: dev was trained with 512 tokens, schnell with 256 (as the reference runs them).
MAX_SEQUENCE_LENGTH = {"dev": 512, "schnell": 256}


@dataclass(frozen=True)
class LoraChoice:
    """A LoRA source string as the user typed it, and its scale."""

    source: str
    scale: float

    @classmethod
    def of(cls, source: str | None, scale: float) -> LoraChoice | None:
        if source is None or not str(source).strip():
            return None
        return cls(str(source).strip(), float(scale))


# Inputs the schema types as integers. JSON has one number type, so the schema (and Cog's validator) accepts 2.0
# or 1e3 for them and run() receives a float, which torch, PIL and range() refuse with errors of their own.
INTEGER_FIELDS = ("height", "width", "num_outputs", "num_inference_steps", "seed", "output_quality")


@dataclass(frozen=True)
class GenerationRequest:
    """One prediction's inputs, named as in the public schema; integer inputs are ints once it exists."""

    prompt: str
    image: str | os.PathLike | None = None
    mask: str | os.PathLike | None = None
    aspect_ratio: str = "1:1"
    height: int | None = None
    width: int | None = None
    prompt_strength: float = 0.8
    model: str = "dev"
    num_outputs: int = 1
    num_inference_steps: int = 28
    guidance_scale: float = 3.0
    seed: int | None = None
    output_format: str = "webp"
    output_quality: int = 80
    disable_safety_checker: bool = False
    go_fast: bool = False
    megapixels: str = "1"
    main_lora: LoraChoice | None = None
    extra_lora: LoraChoice | None = None

    def __post_init__(self) -> None:
        for name in INTEGER_FIELDS:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, whole_number(name, value))

    @property
    def mode(self) -> Mode:
        if self.image is None:
            return "txt2img"
        return "inpaint" if self.mask is not None else "img2img"


@dataclass(frozen=True)
class GenerationPlan:
    """A request resolved against the rules: everything the pipelines need, nothing left to decide."""

    mode: Mode
    model: str
    width: int
    height: int
    seed: int
    num_outputs: int
    num_inference_steps: int
    guidance_scale: float
    strength: float
    max_sequence_length: int

    @property
    def steps_to_run(self) -> int:
        """The denoising steps each output runs: all of them for text-to-image; for img2img and inpainting
        only the last ones, as `strength` decides (0.6 of 28 runs 17)."""
        return steps_that_run(self.num_inference_steps, self.strength)


def whole_number(name: str, value: int | float) -> int:
    """`value` as an int when it is a whole number (2, 2.0, 1e3); UserInputError naming `name` otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():  # False for NaN and infinity too
        return int(value)
    raise UserInputError(f"{name} must be a whole number, got {value!r}.")


def validate(request: GenerationRequest) -> None:
    """Reject what the schema cannot express, with a message that says what to change."""
    if request.mask is not None and request.image is None:
        raise UserInputError(
            "mask was given without image: inpainting needs both the image to edit and the mask "
            "(white = repaint, black = keep). Add an image, or leave out the mask."
        )
    if request.model not in MODELS:
        raise UserInputError(f"model must be one of {', '.join(MODELS)}, not {request.model!r}.")
    if request.output_format not in OUTPUT_FORMATS:
        raise UserInputError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}.")
    _check_range("num_outputs", request.num_outputs, 1, 4)
    _check_range("num_inference_steps", request.num_inference_steps, 1, 50)
    _check_range("guidance_scale", request.guidance_scale, 0, 10)
    _check_range("prompt_strength", request.prompt_strength, 0, 1)
    _check_range("output_quality", request.output_quality, 0, 100)


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise UserInputError(f"{name} must be between {low} and {high}, got {value}.")


def steps_that_run(num_inference_steps: int, strength: float) -> int:
    """How many denoising steps diffusers runs for img2img/inpainting at this strength (its get_timesteps):
    it skips the first int(steps x (1 - strength)) steps, so it runs about ceil(steps x strength), at least one
    for any strength above 0 (0.03 of 28 runs 1), and none only at strength 0."""
    init_timestep = min(num_inference_steps * strength, num_inference_steps)
    return num_inference_steps - int(max(num_inference_steps - init_timestep, 0))


def plan(request: GenerationRequest, input_image_size: tuple[int, int] | None = None) -> GenerationPlan:
    """Resolve sizes, seed and steps. `input_image_size` is the (width, height) of `request.image`."""
    validate(request)
    mode = request.mode
    if mode == "txt2img":
        if request.aspect_ratio == "custom":
            width, height = sizes.custom_size(request.width, request.height)
        else:
            width, height = sizes.size_for_aspect_ratio(request.aspect_ratio, request.megapixels)
        strength = 1.0
    else:
        assert input_image_size is not None, "image modes need the input image's size"
        width, height = sizes.size_for_input_image(*input_image_size)
        strength = request.prompt_strength
        if steps_that_run(request.num_inference_steps, strength) < 1:
            raise UserInputError(
                f"prompt_strength {strength} leaves no denoising step to run with num_inference_steps "
                f"{request.num_inference_steps}: it would return the input image unchanged. Use a prompt_strength "
                "above 0 (1.0 repaints the image completely)."
            )
    return GenerationPlan(
        mode=mode,
        model=request.model,
        width=width,
        height=height,
        seed=resolve_seed(request.seed, request.num_outputs),
        num_outputs=request.num_outputs,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale if request.model == "dev" else 0.0,
        strength=strength,
        max_sequence_length=MAX_SEQUENCE_LENGTH[request.model],
    )
