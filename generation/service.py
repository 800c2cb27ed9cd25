"""The prediction service: loads everything once, then turns requests into image files.

setup() cost is paid here once per process: base weights found (or downloaded), GPU memory planned, both models
and the safety models loaded, the execution paths built (compiled and warmed up on a GPU). A request then runs in
two parts: `prepare` reads and checks its inputs, resolves its plan and fetches its LoRA files, touching no model,
so the server runs it beside another request's GPU work; `render` picks its execution path, attaches the LoRAs,
denoises each output with its own seed, checks safety and writes the files, one request at a time
(generation/gpu_queue.py queues them; `generate` runs both parts in the caller's thread). Each stage's time is
logged for people, and the files come back with what was done (`GenerationResult`) for scripts, tests and
metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from lora_loader import LoraFetcher
from serverconfig import ServerConfig
from weights.layout import FLUX_DEV, FLUX_SCHNELL, NSFW_CLASSIFIER, SAFETY_CHECKER

from . import execution, images
from .base_weights import find_base_weights
from .cancel import CancelFlag
from .errors import UserInputError
from .fp8_path import fp8_unavailable_reason
from .logs import StageTimes, quiet_libraries, stage, step_logger
from .loras import FetchedLoras, LoraStage
from .outputs import OutputFolders
from .pipelines import FluxModels
from .placement import WeightPlacement
from .request import GenerationPlan, GenerationRequest, plan
from .result import GenerationResult
from .safety import ALL_FLAGGED_MESSAGE, SafetyChecker
from .seeds import generator_for
from .settings import Settings
from .setup_paths import build_paths

logger = logging.getLogger(__name__)

QUEUE_WORTH_MENTIONING = 0.01  # seconds waited for the GPU below which no other request held it


class GenerationService:
    def __init__(
        self,
        settings: Settings,
        safety: SafetyChecker,
        loras: LoraStage,
        setup_seconds: dict[str, float] | None = None,
    ):
        self.settings = settings
        self.safety = safety
        self.loras = loras
        self.paths = loras.paths
        self.models = self.paths.plain.models  # the bf16 models every path shares its encoders and VAE with
        self.setup_seconds = dict(setup_seconds or {})  # stage -> seconds (docs/DESIGN.md "Cold and warm starts")
        self.outputs = OutputFolders(settings.output_dir)

    @classmethod
    def from_config(
        cls, config: ServerConfig, folders: dict[str, Path] | None = None, times: StageTimes | None = None
    ) -> GenerationService:
        """Load everything `config` names: base weights (found or downloaded), models, the execution paths
        this device can run (generation/setup_paths.py), the LoRA fetcher.

        `folders` are base weights already found by `find_base_weights` (predict.py finds them before importing
        this module, so a missing or gated model is reported in a second), with `times` holding how long it took.
        """
        quiet_libraries()  # diffusers' loading bars: it was not imported yet when predict.py configured logging
        settings = Settings.from_config(config)
        logger.info("Device %s, dtype %s, weights in %s", settings.device, settings.dtype, settings.weights_dir)
        fetcher = LoraFetcher(config)
        times = times or StageTimes()
        with stage("Setup"):
            if folders is None:
                folders = find_base_weights(config, times)
            with times.stage("residency", "Planning GPU memory"):
                placement = WeightPlacement.for_device(
                    settings.weights_dir, settings.device, fp8_wanted=fp8_unavailable_reason(settings.device) is None
                )
            with times.stage("weights_load", "Loading FLUX.1 [dev] and [schnell]"):
                on_host = [model for model in ("dev", "schnell") if placement.on_host(model, "bf16")]
                models = FluxModels.load(
                    folders[FLUX_DEV.name], folders[FLUX_SCHNELL.name], settings.device, settings.dtype, on_host
                )
            with times.stage("safety_load", "Loading the safety checkers"):
                safety = SafetyChecker(
                    folders[SAFETY_CHECKER.name], folders[NSFW_CLASSIFIER.name], settings.device, settings.dtype
                )
            paths = build_paths(models, config, times, placement)
        logger.info(
            "Setup split (s): %s", ", ".join(f"{name} {seconds:.2f}" for name, seconds in times.seconds.items())
        )
        return cls(settings, safety, LoraStage(fetcher, paths), times.seconds)

    def generate(self, request: GenerationRequest, cancel: CancelFlag | None = None) -> GenerationResult:
        """`prepare` then `render`, in this thread (script/predict, tests, benches; the server queues them)."""
        return self.render(self.prepare(request), cancel)

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """What a request needs before the GPU: its inputs read and checked, its plan, its LoRA files fetched.
        Changes no model, so it runs beside another request's `render` (generation/gpu_queue.py)."""
        # Every input is read and checked before any LoRA is downloaded: a bad mask must not cost a download.
        init_image = images.load_image(request.image) if request.image is not None else None
        resolved = plan(request, init_image.size if init_image else None)
        image, mask = self._prepare_inputs(request, resolved, init_image)
        self._log_plan(resolved)
        return PreparedRequest(request, resolved, image, mask, self.loras.fetch(request))

    def render(
        self, prepared: PreparedRequest, cancel: CancelFlag | None = None, queued: float = 0.0
    ) -> GenerationResult:
        """The request's images: its LoRAs onto the models, the prompt encoded, each output denoised, safety
        checked, the files written. One at a time per process (it changes the models). `cancel` stops it between
        two denoising steps or stages (PredictionCancelled); `queued` is how long it waited for the GPU."""
        cancel = cancel or CancelFlag()
        cancel.check()
        request, resolved = prepared.request, prepared.plan
        times = StageTimes()  # a stage that did not run (no queue, no LoRAs, safety checker off) is absent
        if queued >= QUEUE_WORTH_MENTIONING:
            logger.info("Waited %.2f s for the GPU", queued)
            times.add("queue", queued)
        route = self.paths.route(request, resolved)
        loras = self.loras.apply(request, route, prepared.loras)  # before encoding: a LoRA may carry CLIP layers
        route = loras.route
        if loras.events or loras.seconds:
            times.add("loras", loras.seconds)
        execution.log_route(route, self.paths.default, request.go_fast)
        moved = route.path.prepare_model(resolved.model)
        if moved:
            times.add("weights_swap", moved)
        with route.path.running(route.eager):
            generated = self._denoise_all(
                request, resolved, prepared.image, prepared.mask, route.path.models, times, cancel
            )
        cancel.check()
        kept = self._drop_unsafe(generated, request.disable_safety_checker, times)
        with times.stage("save", "Saving outputs"):
            paths = images.save_outputs(kept, request.output_format, request.output_quality, self.outputs.new())
        kept_indices = {index for index, _ in kept}
        return GenerationResult(
            paths=paths,
            plan=resolved,
            path=route.name,
            path_reason=route.reason,
            loras=loras,
            flagged=tuple(index for index, _ in generated if index not in kept_indices),
            stage_seconds=times.seconds,
        )

    def _log_plan(self, resolved: GenerationPlan) -> None:
        logger.info("Using seed: %d", resolved.seed)
        if resolved.num_outputs > 1:
            logger.info("Output i uses seed %d + i, so out-i can be regenerated alone", resolved.seed)
        steps = f"{resolved.num_inference_steps} step{'s' if resolved.num_inference_steps != 1 else ''}"
        detail = ""
        if resolved.mode != "txt2img":  # strength skips the first steps: say how many really run
            steps = f"{resolved.steps_to_run} of {steps}"
            detail = f", strength {resolved.strength}"
        logger.info(
            "Mode %s, model %s, %dx%d, %s, guidance %s%s, %d output(s)",
            resolved.mode,
            resolved.model,
            resolved.width,
            resolved.height,
            steps,
            resolved.guidance_scale,
            detail,
            resolved.num_outputs,
        )

    @staticmethod
    def _prepare_inputs(
        request: GenerationRequest, resolved: GenerationPlan, init_image: Image.Image | None
    ) -> tuple[Image.Image | None, Image.Image | None]:
        """The input image at the output size, and the mask at that size (UserInputError if it does not fit)."""
        if init_image is None:
            return None, None
        size = (resolved.width, resolved.height)
        mask = images.load_mask(request.mask, size, init_image.size) if resolved.mode == "inpaint" else None
        return images.fit_image(init_image, size), mask

    def _denoise_all(
        self,
        request: GenerationRequest,
        resolved: GenerationPlan,
        image: Image.Image | None,
        mask: Image.Image | None,
        models: FluxModels,
        times: StageTimes,
        cancel: CancelFlag,
    ) -> list[tuple[int, Image.Image]]:
        with times.stage("encode", "Encoding the prompt"):
            embeddings = models.encode_prompt(resolved.model, request.prompt, resolved.max_sequence_length)
        generated = []
        for index in range(resolved.num_outputs):
            name = images.output_name(index, request.output_format)
            with times.stage("denoise", f"Generating {name}"):
                generator = generator_for(resolved.seed + index, self.settings.device)
                on_step = _stopping_when_cancelled(step_logger(name, resolved.steps_to_run), cancel)
                output = models.denoise(resolved, embeddings, generator, image, mask, on_step)
            generated.append((index, output))
        return generated

    def _drop_unsafe(
        self, generated: list[tuple[int, Image.Image]], disable_safety_checker: bool, times: StageTimes
    ) -> list[tuple[int, Image.Image]]:
        if disable_safety_checker:
            logger.info("Safety checker disabled")
            return generated
        with times.stage("safety", "Safety check"):
            flags = self.safety.flagged([image for _, image in generated])
        kept = [pair for pair, flagged in zip(generated, flags, strict=True) if not flagged]
        for (index, _), flagged in zip(generated, flags, strict=True):
            if flagged:
                logger.info("out-%d was flagged as NSFW and is not returned", index)
        if not kept:
            raise UserInputError(ALL_FLAGGED_MESSAGE)
        return kept


@dataclass(frozen=True)
class PreparedRequest:
    """A request ready for the GPU: checked, planned, its input images decoded and its LoRA files on disk."""

    request: GenerationRequest
    plan: GenerationPlan
    image: Image.Image | None
    mask: Image.Image | None
    loras: FetchedLoras


def _stopping_when_cancelled(on_step_end: Callable, cancel: CancelFlag) -> Callable:
    """`on_step_end`, then a check of `cancel`: diffusers calls it after every step, so a cancelled prediction
    stops within one step (its pipeline call unwinds with PredictionCancelled; nothing is left half done)."""

    def on_step(pipeline, step: int, timestep, callback_kwargs: dict) -> dict:
        callback_kwargs = on_step_end(pipeline, step, timestep, callback_kwargs)
        cancel.check()
        return callback_kwargs

    return on_step
