"""Safety: CompVis's safety checker first, Falcons.ai's NSFW classifier as a second opinion.

The CompVis checker has many false positives, so (like the reference) an image it flags is kept when
the Falcons.ai classifier calls it "normal". A classifier error counts as unsafe.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image

# The PIL processors: the same preprocessing as the real repos' configs, without needing torchvision.
from transformers import AutoModelForImageClassification, CLIPImageProcessorPil, ViTImageProcessorPil

logger = logging.getLogger(__name__)

ALL_FLAGGED_MESSAGE = "All generated images contained NSFW content. Try running it again with a different prompt."


class SafetyChecker:
    def __init__(self, checker_dir: Path, classifier_dir: Path, device: torch.device, dtype: torch.dtype):
        self.device = device
        self.dtype = dtype
        self.checker = StableDiffusionSafetyChecker.from_pretrained(checker_dir, dtype=dtype).to(device)
        self.checker_processor = CLIPImageProcessorPil.from_pretrained(checker_dir)
        self.classifier = AutoModelForImageClassification.from_pretrained(classifier_dir).to(device)
        self.classifier_processor = ViTImageProcessorPil.from_pretrained(classifier_dir)

    @torch.inference_mode()
    def flagged(self, images: list[Image.Image]) -> list[bool]:
        """For each image, whether it is unsafe after both opinions."""
        first_opinion = self._checker_flags(images)
        return [
            flag and not self._classifier_says_normal(image) for image, flag in zip(images, first_opinion, strict=True)
        ]

    def _checker_flags(self, images: list[Image.Image]) -> list[bool]:
        clip_input = self.checker_processor(images, return_tensors="pt").pixel_values
        arrays = np.stack([np.asarray(image, dtype=np.float32) / 255.0 for image in images])
        _, has_nsfw = self.checker(images=arrays, clip_input=clip_input.to(self.device, self.dtype))
        return [bool(flag) for flag in has_nsfw]

    def _classifier_says_normal(self, image: Image.Image) -> bool:
        try:
            inputs = self.classifier_processor(images=image, return_tensors="pt").to(self.device)
            logits = self.classifier(**inputs).logits
            label = self.classifier.config.id2label[int(logits.argmax(-1)[0])]
        except Exception:  # a broken second opinion must not let an image through
            logger.exception("The NSFW classifier failed; treating the image as unsafe")
            return False
        return label == "normal"
