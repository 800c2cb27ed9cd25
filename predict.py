"""Cog entry points: the two public input schemas and the glue to `generation`.

`Predictor` is the schema of the hotswap LoRA model pages (21 inputs, with `replicate_weights`);
`TrainedPredictor` is the schema of a trained-LoRA model page (20 inputs): its main LoRA is the
model's own trained weights, handed to `setup(weights)` by Cog from `COG_WEIGHTS`. Both schemas must
match the public pages to the letter, so every name, default, range and description below is part of
the contract and is checked by tests against `.cog/openapi_schema.json` and the seed pages.

Descriptions and choices are module-level literals because the cog CLI reads this file statically
(it resolves module constants but not imports) when it writes the OpenAPI schema. For the same reason
each class spells out its own `run` signature: the two differ only by `replicate_weights`, and a
shared decorator or generated signature would be invisible to that static reader.

Cog's current API (`BaseRunner`, `run()`): the deprecated `BasePredictor`/`predict()` would print deprecation
warnings into the server's logs; the schema is the same either way (tests/test_schema.py proves it byte for byte).
Each prediction's key figures (seed, steps, path, LoRA events, stage times) are recorded as Cog metrics.

run() is async with `@cog.concurrent(max=4)`: four prediction slots, one prediction on the GPU at a time and up
to three waiting, their inputs and LoRAs downloading meanwhile (generation/gpu_queue.py). One slot would do for
the GPU, but coglet answers a prediction a moment before it frees its slot, so a client sending its next request
right after an answer got `409 At capacity` once in 10-20 requests; with spare slots it never does
(docs/DESIGN.md, "Serving"). `cog build` reads the decorator (an integer literal, as its static reader needs); a
bare `python -m cog.server.http` does not, so script/serve and testkit set COG_MAX_CONCURRENCY from it.
"""

import sys
import time
from typing import Optional

import cog.types
from cog import BaseRunner, Input, Path

from generation import input_urls
from generation.base_weights import find_base_weights
from generation.errors import UserInputError
from generation.logs import StageTimes, configure_logging
from generation.request import GenerationRequest, LoraChoice
from serverconfig import ServerConfig

# coglet hands setup()'s output to /health-check asynchronously, and lines still on their way when setup() returns
# are dropped from the setup logs (measured with coglet 0.23.1); a short pause lets the last lines arrive.
SETUP_LOG_SETTLE_SECONDS = 0.2

PROMPT = (
    "Prompt for generated image. If you include the `trigger_word` used in the training process you are "
    "more likely to activate the trained object, style, or concept in the resulting image."
)
IMAGE = (
    "Input image for image to image or inpainting mode. If provided, aspect_ratio, width, and height "
    "inputs are ignored."
)
MASK = "Image mask for image inpainting mode. If provided, aspect_ratio, width, and height inputs are ignored."
ASPECT_RATIO = (
    "Aspect ratio for the generated image. If custom is selected, uses height and width below & will run in bf16 mode"
)
ASPECT_RATIO_CHOICES = ["1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21", "custom"]
HEIGHT = (
    "Height of generated image. Only works if `aspect_ratio` is set to custom. Will be rounded to nearest "
    "multiple of 16. Incompatible with fast generation"
)
WIDTH = (
    "Width of generated image. Only works if `aspect_ratio` is set to custom. Will be rounded to nearest "
    "multiple of 16. Incompatible with fast generation"
)
PROMPT_STRENGTH = "Prompt strength when using img2img. 1.0 corresponds to full destruction of information in image"
MODEL = (
    "Which model to run inference with. The dev model performs best with around 28 inference steps but "
    "the schnell model only needs 4 steps."
)
MODEL_CHOICES = ["dev", "schnell"]
NUM_OUTPUTS = "Number of outputs to generate"
NUM_INFERENCE_STEPS = "Number of denoising steps. More steps can give more detailed images, but take longer."
GUIDANCE_SCALE = (
    "Guidance scale for the diffusion process. Lower values can give more realistic images. Good values "
    "to try are 2, 2.5, 3 and 3.5"
)
SEED = "Random seed. Set for reproducible generation"
OUTPUT_FORMAT = "Format of the output images"
OUTPUT_FORMAT_CHOICES = ["webp", "jpg", "png"]
OUTPUT_QUALITY = (
    "Quality when saving the output images, from 0 to 100. 100 is best quality, 0 is lowest quality. Not "
    "relevant for .png outputs"
)
DISABLE_SAFETY_CHECKER = "Disable safety checker for generated images."
GO_FAST = (
    "Run faster predictions with model optimized for speed (currently fp8 quantized); disable to run in original bf16"
)
MEGAPIXELS = "Approximate number of megapixels for generated image"
MEGAPIXELS_CHOICES = ["1", "0.25"]
LORA_WEIGHTS = (
    "Load LoRA weights. Supports Replicate models in the format <owner>/<username> or "
    "<owner>/<username>/<version>, HuggingFace URLs in the format huggingface.co/<owner>/<model-name>, "
    "CivitAI URLs in the format civitai.com/models/<id>[/<model-name>], or arbitrary .safetensors URLs "
    "from the Internet. For example, 'fofr/flux-pixar-cars'"
)
LORA_SCALE = (
    "Determines how strongly the main LoRA should be applied. Sane results between 0 and 1 for base "
    "inference. For go_fast we apply a 1.5x multiplier to this value; we've generally seen good "
    "performance when scaling the base value by that amount. You may still need to experiment to find "
    "the best value for your particular lora."
)
EXTRA_LORA_SCALE = (
    "Determines how strongly the extra LoRA should be applied. Sane results between 0 and 1 for base "
    "inference. For go_fast we apply a 1.5x multiplier to this value; we've generally seen good "
    "performance when scaling the base value by that amount. You may still need to experiment to find "
    "the best value for your particular lora."
)


class Predictor(BaseRunner):
    """FLUX.1 [dev]/[schnell] with a LoRA chosen per request (`replicate_weights`) and an extra LoRA."""

    def setup(self, weights: Optional[str] = None) -> None:
        configure_logging()
        # Cog passes COG_WEIGHTS as a raw string; it is the default main LoRA when a request names none.
        self.default_lora = str(weights) if weights else None
        config = ServerConfig.from_env()  # every setting, read once; a bad value fails setup naming its variable
        times = StageTimes()
        folders = find_base_weights(config, times)  # before the heavy imports: a missing model fails in a second

        # Imported here, not at the top: the schema generator (script/serve, script/predict) imports this module,
        # and the service's imports (torch's compiler, diffusers, peft) would add seconds to every schema build.
        from generation.gpu_queue import GpuQueue
        from generation.service import GenerationService

        # Cog downloads image/mask URLs before run() runs, with no address check or size cap of its own; from
        # here on they download under the configured address policy, timeouts and the input-image cap.
        input_urls.install(cog.types, config)
        self.service = GenerationService.from_config(config, folders, times)
        self.gpu = GpuQueue(self.service)
        if self.default_lora:
            self.service.loras.preload(self.default_lora)
        _settle_setup_logs()

    @cog.concurrent(max=4)
    async def run(
        self,
        prompt: str = Input(description=PROMPT),
        image: Optional[Path] = Input(description=IMAGE, default=None),
        mask: Optional[Path] = Input(description=MASK, default=None),
        aspect_ratio: str = Input(description=ASPECT_RATIO, choices=ASPECT_RATIO_CHOICES, default="1:1"),
        height: Optional[int] = Input(description=HEIGHT, ge=256, le=1440, default=None),
        width: Optional[int] = Input(description=WIDTH, ge=256, le=1440, default=None),
        prompt_strength: float = Input(description=PROMPT_STRENGTH, ge=0.0, le=1.0, default=0.8),
        model: str = Input(description=MODEL, choices=MODEL_CHOICES, default="dev"),
        num_outputs: int = Input(description=NUM_OUTPUTS, ge=1, le=4, default=1),
        num_inference_steps: int = Input(description=NUM_INFERENCE_STEPS, ge=1, le=50, default=28),
        guidance_scale: float = Input(description=GUIDANCE_SCALE, ge=0, le=10, default=3),
        seed: Optional[int] = Input(description=SEED, default=None),
        output_format: str = Input(description=OUTPUT_FORMAT, choices=OUTPUT_FORMAT_CHOICES, default="webp"),
        output_quality: int = Input(description=OUTPUT_QUALITY, ge=0, le=100, default=80),
        disable_safety_checker: bool = Input(description=DISABLE_SAFETY_CHECKER, default=False),
        go_fast: bool = Input(description=GO_FAST, default=False),
        megapixels: str = Input(description=MEGAPIXELS, choices=MEGAPIXELS_CHOICES, default="1"),
        replicate_weights: Optional[str] = Input(description=LORA_WEIGHTS, default=None),
        lora_scale: float = Input(description=LORA_SCALE, ge=-1, le=3, default=1.0),
        extra_lora: Optional[str] = Input(description=LORA_WEIGHTS, default=None),
        extra_lora_scale: float = Input(description=EXTRA_LORA_SCALE, ge=-1, le=3, default=1.0),
    ) -> list[Path]:
        return await self._generate(**_request_fields(locals()), main_lora=replicate_weights or self.default_lora)

    async def _generate(
        self,
        *,
        main_lora: Optional[str],
        lora_scale: float,
        extra_lora: Optional[str],
        extra_lora_scale: float,
        **fields,
    ) -> list[Path]:
        def make_request() -> GenerationRequest:  # in the preparing thread: require_file may download
            for name in ("image", "mask"):  # a plain string is a server path the client typed, not a download
                fields[name] = input_urls.require_file(fields[name], name)
            return GenerationRequest(
                **fields,
                main_lora=LoraChoice.of(main_lora, lora_scale),
                extra_lora=LoraChoice.of(extra_lora, extra_lora_scale),
            )

        result = await self.gpu.generate(make_request)
        for name, value in result.metrics().items():  # a no-op outside the Cog server (script/predict)
            self.record_metric(name, value)
        return [Path(p) for p in result.paths]


class TrainedPredictor(Predictor):
    """The schema of a trained-LoRA model: its own LoRA (`setup(weights)`) is always the main LoRA."""

    def setup(self, weights: Optional[str] = None) -> None:
        if not weights:  # without its LoRA this schema would silently serve the base model
            raise UserInputError(
                "predict.py:TrainedPredictor serves one trained LoRA, given as the model's weights: set COG_WEIGHTS "
                "(a Replicate training output, a Hugging Face repo or any LoRA source). To choose LoRAs per "
                "request, serve predict.py:Predictor."
            )
        super().setup(weights)

    @cog.concurrent(max=4)
    async def run(
        self,
        prompt: str = Input(description=PROMPT),
        image: Optional[Path] = Input(description=IMAGE, default=None),
        mask: Optional[Path] = Input(description=MASK, default=None),
        aspect_ratio: str = Input(description=ASPECT_RATIO, choices=ASPECT_RATIO_CHOICES, default="1:1"),
        height: Optional[int] = Input(description=HEIGHT, ge=256, le=1440, default=None),
        width: Optional[int] = Input(description=WIDTH, ge=256, le=1440, default=None),
        prompt_strength: float = Input(description=PROMPT_STRENGTH, ge=0.0, le=1.0, default=0.8),
        model: str = Input(description=MODEL, choices=MODEL_CHOICES, default="dev"),
        num_outputs: int = Input(description=NUM_OUTPUTS, ge=1, le=4, default=1),
        num_inference_steps: int = Input(description=NUM_INFERENCE_STEPS, ge=1, le=50, default=28),
        guidance_scale: float = Input(description=GUIDANCE_SCALE, ge=0, le=10, default=3),
        seed: Optional[int] = Input(description=SEED, default=None),
        output_format: str = Input(description=OUTPUT_FORMAT, choices=OUTPUT_FORMAT_CHOICES, default="webp"),
        output_quality: int = Input(description=OUTPUT_QUALITY, ge=0, le=100, default=80),
        disable_safety_checker: bool = Input(description=DISABLE_SAFETY_CHECKER, default=False),
        go_fast: bool = Input(description=GO_FAST, default=False),
        megapixels: str = Input(description=MEGAPIXELS, choices=MEGAPIXELS_CHOICES, default="1"),
        lora_scale: float = Input(description=LORA_SCALE, ge=-1, le=3, default=1.0),
        extra_lora: Optional[str] = Input(description=LORA_WEIGHTS, default=None),
        extra_lora_scale: float = Input(description=EXTRA_LORA_SCALE, ge=-1, le=3, default=1.0),
    ) -> list[Path]:
        return await self._generate(**_request_fields(locals()), main_lora=self.default_lora)


def _request_fields(arguments: dict) -> dict:
    """The predict() arguments that map one-to-one onto GenerationRequest fields."""
    return {k: v for k, v in arguments.items() if k not in ("self", "replicate_weights", "__class__")}


def _settle_setup_logs() -> None:
    """Give setup()'s last log lines time to reach /health-check before Cog marks setup complete."""
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(SETUP_LOG_SETTLE_SECONDS)
