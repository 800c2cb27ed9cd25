"""FLUX.1 [dev] and [schnell] as diffusers pipelines, for text-to-image, img2img and inpainting.

One set of text encoders, tokenizers and VAE (dev's) serves both models: schnell adds only its own
transformer and scheduler, which is all that differs between the two checkpoints. The img2img and
inpainting pipelines are views over the same module objects, so a LoRA attached to a
transformer is seen by all three modes of that model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    FluxImg2ImgPipeline,
    FluxInpaintPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
)
from PIL import Image

from .request import GenerationPlan, Mode

logger = logging.getLogger(__name__)

# T5 reads at most 512 tokens and no token spans more than a few dozen characters, so nothing past this many
# characters can reach an encoder; cutting here first spares tokenizing a megabyte-long prompt in full.
PROMPT_CHARACTERS_READ = 65_536
PIPELINE_CLASSES = {"txt2img": FluxPipeline, "img2img": FluxImg2ImgPipeline, "inpaint": FluxInpaintPipeline}


@dataclass
class PromptEmbeddings:
    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor


class FluxModels:
    """dev and schnell, each usable in the three modes, sharing encoders and VAE."""

    def __init__(self, dev: FluxPipeline, schnell: FluxPipeline, device: torch.device):
        self.device = device
        self._pipelines: dict[tuple[str, Mode], FluxPipeline] = {}
        for model, base in (("dev", dev), ("schnell", schnell)):
            base.set_progress_bar_config(disable=True)  # we log steps ourselves
            self._pipelines[(model, "txt2img")] = base
            for mode in ("img2img", "inpaint"):
                # The constructor shares the modules as from_pipe does, without its dtype cast (and warnings).
                view = PIPELINE_CLASSES[mode](**base.components)
                view.set_progress_bar_config(disable=True)
                self._pipelines[(model, mode)] = view

    @classmethod
    def load(
        cls,
        dev_dir: Path,
        schnell_dir: Path,
        device: torch.device,
        dtype: torch.dtype,
        transformers_on_host: Collection[str] = (),
    ) -> FluxModels:
        """Both models on `device`, except the transformers named in `transformers_on_host`, which stay in host
        memory for generation/placement.py to park (a 48 GB card cannot hold both bf16 transformers)."""
        dev = FluxPipeline.from_pretrained(dev_dir, dtype=dtype, local_files_only=True)
        schnell = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(schnell_dir, subfolder="scheduler"),
            transformer=FluxTransformer2DModel.from_pretrained(
                schnell_dir, subfolder="transformer", dtype=dtype, local_files_only=True
            ),
            vae=dev.vae,
            text_encoder=dev.text_encoder,
            tokenizer=dev.tokenizer,
            text_encoder_2=dev.text_encoder_2,
            tokenizer_2=dev.tokenizer_2,
        )
        if device.type != "cpu":  # from_pretrained already put them on the CPU
            for model, pipe in (("dev", dev), ("schnell", schnell)):
                for name, component in pipe.components.items():
                    stays = name == "transformer" and model in transformers_on_host
                    if isinstance(component, torch.nn.Module) and not stays:
                        component.to(device)
        return cls(dev, schnell, device)

    def pipeline(self, model: str, mode: Mode) -> FluxPipeline:
        return self._pipelines[(model, mode)]

    def transformer(self, model: str) -> FluxTransformer2DModel:
        return self._pipelines[(model, "txt2img")].transformer

    @torch.inference_mode()
    def encode_prompt(self, model: str, prompt: str, max_sequence_length: int) -> PromptEmbeddings:
        """Encode once per prediction; every output reuses it. A prompt longer than the encoders read is cut
        by them as in the reference; the log says so once, in our words (see `log_truncation`)."""
        pipe = self.pipeline(model, "txt2img")
        log_truncation(pipe, prompt[:PROMPT_CHARACTERS_READ], max_sequence_length, len(prompt))
        prompt = prompt[:PROMPT_CHARACTERS_READ]
        prompt_embeds, pooled, _ = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, device=self.device, max_sequence_length=max_sequence_length
        )
        return PromptEmbeddings(prompt_embeds, pooled)

    @torch.inference_mode()
    def denoise(
        self,
        plan: GenerationPlan,
        embeddings: PromptEmbeddings,
        generator: torch.Generator,
        image: Image.Image | None = None,
        mask: Image.Image | None = None,
        on_step_end: Callable | None = None,
    ) -> Image.Image:
        """One output image. Outputs are generated one at a time, each with its own generator, so output
        i with seed s is bit-identical to output 0 with seed s+i (batched matmuls would round differently)."""
        kwargs = dict(
            prompt_embeds=embeddings.prompt_embeds,
            pooled_prompt_embeds=embeddings.pooled_prompt_embeds,
            width=plan.width,
            height=plan.height,
            num_inference_steps=plan.num_inference_steps,
            guidance_scale=plan.guidance_scale,
            generator=generator,
            max_sequence_length=plan.max_sequence_length,
            callback_on_step_end=on_step_end,
            output_type="pil",
        )
        if plan.mode != "txt2img":
            kwargs.update(image=image, strength=plan.strength)
        if plan.mode == "inpaint":
            kwargs.update(mask_image=mask)
        return self.pipeline(plan.model, plan.mode)(**kwargs).images[0]


def log_truncation(pipe: FluxPipeline, prompt: str, max_sequence_length: int, characters: int) -> None:
    """One line when the prompt is longer than CLIP (77 tokens) or T5 (`max_sequence_length`) reads. diffusers
    would warn instead, echoing the whole cut-off text (megabytes for a huge prompt); that warning is dropped."""
    clip = len(pipe.tokenizer(prompt, verbose=False).input_ids)
    t5 = len(pipe.tokenizer_2(prompt, verbose=False).input_ids)
    clip_limit, t5_limit = pipe.tokenizer.model_max_length, max_sequence_length
    if clip <= clip_limit and t5 <= t5_limit:
        return
    at_least = "at least " if characters > len(prompt) else ""
    logger.info(
        "The prompt (%d characters) is %s%d tokens for CLIP and %s%d for T5; they read its first %d and %d "
        "tokens, the rest is ignored",
        characters,
        at_least,
        clip,
        at_least,
        t5,
        clip_limit,
        t5_limit,
    )


class _NoTruncationEcho(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("The following part of your input was truncated")


for _name in ("pipeline_flux", "pipeline_flux_img2img", "pipeline_flux_inpaint"):
    logging.getLogger(f"diffusers.pipelines.flux.{_name}").addFilter(_NoTruncationEcho())
