"""The tiny stand-in weights: they load and run through the production calls, and the hand-built safety models
give the documented brightness verdicts through the real diffusers and transformers code (no mocks)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    FluxImg2ImgPipeline,
    FluxInpaintPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
)
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, CLIPImageProcessor

from testkit import tiny_weights as tiny
from weights.layout import ALL_FOLDERS, FLUX_DEV, FLUX_SCHNELL, NSFW_CLASSIFIER, SAFETY_CHECKER

BUILD_THRESHOLD = 0.5  # what the shared build uses for both safety models
SIZE = 64


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    # How long the build takes is the CLI's last line ("Wrote tiny weights to DIR in 0.5s"), not an assertion.
    root = tmp_path_factory.mktemp("tiny_weights")
    tiny.write_tiny_weights(root, safety_threshold=BUILD_THRESHOLD, nsfw_threshold=BUILD_THRESHOLD)
    return root


@pytest.fixture(scope="module")
def dev_pipe(root) -> FluxPipeline:
    pipe = FluxPipeline.from_pretrained(root / FLUX_DEV.name, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe, **kwargs) -> torch.Tensor:
    generator = torch.Generator("cpu").manual_seed(0)
    kwargs = {"height": SIZE, "width": SIZE, "num_inference_steps": 2, "output_type": "pt", **kwargs}
    return pipe(prompt="a photo of TOK", generator=generator, **kwargs).images


def _files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


# Layout and build


@pytest.mark.parametrize("folder", ALL_FOLDERS, ids=lambda folder: folder.name)
def test_required_files_exist(root, folder):
    for name in folder.required_files:
        assert (root / folder.name / name).is_file(), name


@pytest.mark.parametrize("folder", ALL_FOLDERS, ids=lambda folder: folder.name)
def test_every_file_is_one_a_download_would_fetch(root, folder):
    for name in _files(root / folder.name):
        assert any(fnmatch.fnmatch(name, pattern) for pattern in folder.allow_patterns), name


def test_schnell_has_only_what_the_server_loads(root):
    assert set(_files(root / FLUX_SCHNELL.name)) == {
        "model_index.json",
        "scheduler/scheduler_config.json",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
    }


def test_build_is_deterministic_and_leaves_the_global_rng_alone(root, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny.write_tiny_weights(tmp_path, safety_threshold=BUILD_THRESHOLD, nsfw_threshold=BUILD_THRESHOLD)
    assert torch.equal(torch.rand(3), expected)
    first, second = _files(root), _files(tmp_path)
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []  # byte-identical, weights included


def test_cli_writes_all_folders(tmp_path, capsys):
    tiny.main([str(tmp_path), "--safety-threshold", "0.3", "--nsfw-threshold", "none"])
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(folder.name for folder in ALL_FOLDERS)
    assert "Wrote tiny weights" in capsys.readouterr().out


# FLUX.1 [dev] and [schnell]


def test_dev_config_matches_the_real_wiring(dev_pipe):
    assert dev_pipe.vae_scale_factor == 8
    assert dev_pipe.transformer.config.guidance_embeds
    assert dev_pipe.scheduler.config.shift == 3.0 and dev_pipe.scheduler.config.use_dynamic_shifting
    assert dev_pipe.tokenizer.model_max_length == 77
    assert len(dev_pipe.tokenizer_2) <= dev_pipe.text_encoder_2.config.vocab_size


def test_dev_txt2img(dev_pipe):
    images = _generate(dev_pipe, guidance_scale=3.5)
    assert images.shape == (1, 3, SIZE, SIZE)
    assert torch.isfinite(images).all()


def test_dev_img2img_and_inpaint_from_pipe(dev_pipe):
    image = Image.new("RGB", (SIZE, SIZE), (200, 80, 40))
    mask = Image.new("L", (SIZE, SIZE), 255)
    img2img = FluxImg2ImgPipeline.from_pipe(dev_pipe)
    inpaint = FluxInpaintPipeline.from_pipe(dev_pipe)
    assert _generate(img2img, image=image, strength=0.8).shape == (1, 3, SIZE, SIZE)
    assert _generate(inpaint, image=image, mask_image=mask, strength=0.85).shape == (1, 3, SIZE, SIZE)


def test_dev_loads_and_runs_in_bfloat16(root):
    pipe = FluxPipeline.from_pretrained(root / FLUX_DEV.name, torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.dtype == torch.bfloat16
    assert _generate(pipe).shape == (1, 3, SIZE, SIZE)


def test_schnell_txt2img_with_dev_encoders(root, dev_pipe):
    schnell = root / FLUX_SCHNELL.name
    transformer = FluxTransformer2DModel.from_pretrained(schnell, subfolder="transformer", torch_dtype=torch.float32)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(schnell, subfolder="scheduler")
    assert not transformer.config.guidance_embeds
    assert scheduler.config.shift == 1.0 and not scheduler.config.use_dynamic_shifting
    pipe = FluxPipeline.from_pipe(dev_pipe, transformer=transformer, scheduler=scheduler)
    images = _generate(pipe, guidance_scale=0.0, max_sequence_length=256)
    assert images.shape == (1, 3, SIZE, SIZE)
    assert torch.isfinite(images).all()


# Safety models: verdicts follow the mean brightness (see testkit/tiny_weights.py)


def _gray(level: int) -> Image.Image:
    return Image.new("RGB", (SIZE, SIZE), (level, level, level))


def _stripes(white_columns: int, width: int = SIZE) -> Image.Image:
    pixels = np.zeros((width, width, 3), dtype=np.uint8)
    pixels[:, :white_columns] = 255
    return Image.fromarray(pixels)


# Grey levels one step either side of each tested threshold, plus a colour and a non-uniform image.
IMAGES = {
    "black": _gray(0),
    "gray63": _gray(63),  # 0.247
    "gray64": _gray(64),  # 0.251
    "gray127": _gray(127),  # 0.498
    "gray128": _gray(128),  # 0.502
    "gray191": _gray(191),  # 0.749
    "gray192": _gray(192),  # 0.753
    "white": _gray(255),
    "red": Image.new("RGB", (SIZE, SIZE), (255, 0, 0)),  # 1/3: brightness averages the channels
    "stripes": _stripes(24),  # 0.375
}


def _load_safety_models(checker_dir: Path, classifier_dir: Path, dtype: torch.dtype = torch.float32):
    checker, info = StableDiffusionSafetyChecker.from_pretrained(
        checker_dir, torch_dtype=dtype, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]  # nothing silently left random
    classifier, info = AutoModelForImageClassification.from_pretrained(classifier_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    return (
        checker,
        CLIPImageProcessor.from_pretrained(checker_dir),
        classifier,
        AutoImageProcessor.from_pretrained(classifier_dir),
    )


@pytest.fixture(scope="module")
def safety_models(tmp_path_factory):
    """Loaded checker and classifier for a threshold (None included), each written once."""
    cache = {}

    def load(threshold: float | None, dtype: torch.dtype = torch.float32):
        if (threshold, dtype) not in cache:
            folder = tmp_path_factory.mktemp("safety")
            tiny.write_safety_checker(folder / SAFETY_CHECKER.name, threshold)
            tiny.write_nsfw_classifier(folder / NSFW_CLASSIFIER.name, threshold)
            cache[threshold, dtype] = _load_safety_models(
                folder / SAFETY_CHECKER.name, folder / NSFW_CLASSIFIER.name, dtype
            )
        return cache[threshold, dtype]

    return load


def _checker_flags(checker, processor, images: list[Image.Image]) -> tuple[np.ndarray, list[bool]]:
    arrays = np.stack([np.asarray(image, dtype=np.float32) / 255.0 for image in images])
    clip_input = processor(images, return_tensors="pt").pixel_values.to(checker.dtype)
    images_out, has_nsfw = checker(images=arrays, clip_input=clip_input)
    return images_out, [bool(flag) for flag in has_nsfw]


@torch.no_grad()
def _classifier_labels(classifier, processor, images: list[Image.Image]) -> list[str]:
    logits = classifier(**processor(images, return_tensors="pt")).logits
    return [classifier.config.id2label[int(index)] for index in logits.argmax(-1)]


def test_processors_work_without_torchvision(safety_models):
    _, checker_processor, _, classifier_processor = safety_models(BUILD_THRESHOLD)
    images = [_gray(0), Image.new("RGB", (96, 48), (255, 255, 255))]
    assert checker_processor(images, return_tensors="pt").pixel_values.shape == (2, 3, 224, 224)
    assert classifier_processor(images, return_tensors="pt").pixel_values.shape == (2, 3, 224, 224)


def test_mean_brightness():
    assert tiny.mean_brightness(IMAGES["white"]) == 1.0
    assert tiny.mean_brightness(IMAGES["red"]) == pytest.approx(1 / 3)
    assert tiny.mean_brightness(IMAGES["stripes"]) == pytest.approx(0.375)


@pytest.mark.parametrize("threshold", [0.25, 0.5, 0.75])
def test_verdicts_follow_brightness_in_one_mixed_batch(safety_models, threshold):
    checker, checker_processor, classifier, classifier_processor = safety_models(threshold)
    images = list(IMAGES.values())
    expected = [tiny.mean_brightness(image) > threshold for image in images]
    assert any(expected) and not all(expected)

    arrays = [np.asarray(image, dtype=np.float32) / 255.0 for image in images]
    images_out, flags = _checker_flags(checker, checker_processor, images)
    assert dict(zip(IMAGES, flags, strict=True)) == dict(zip(IMAGES, expected, strict=True))
    for array, out, flag in zip(arrays, images_out, flags, strict=True):
        assert np.array_equal(out, np.zeros_like(array) if flag else array)  # the checker blacks out what it flags

    labels = _classifier_labels(classifier, classifier_processor, images)
    assert labels == ["nsfw" if flag else "normal" for flag in expected]


def test_full_build_uses_its_thresholds(root):
    checker, checker_processor, classifier, classifier_processor = _load_safety_models(
        root / SAFETY_CHECKER.name, root / NSFW_CLASSIFIER.name
    )
    images = [IMAGES["white"], IMAGES["black"], IMAGES["gray128"], IMAGES["gray127"]]
    assert _checker_flags(checker, checker_processor, images)[1] == [True, False, True, False]
    assert _classifier_labels(classifier, classifier_processor, images) == ["nsfw", "normal", "nsfw", "normal"]


def test_no_threshold_never_flags(safety_models):
    checker, checker_processor, classifier, classifier_processor = safety_models(None)
    images = list(IMAGES.values())
    assert _checker_flags(checker, checker_processor, images)[1] == [False] * len(images)
    assert _classifier_labels(classifier, classifier_processor, images) == ["normal"] * len(images)


def test_extreme_thresholds(safety_models):
    images = [IMAGES["black"], IMAGES["white"]]
    checker, checker_processor, classifier, classifier_processor = safety_models(0.0)
    assert _checker_flags(checker, checker_processor, images)[1] == [False, True]
    assert _classifier_labels(classifier, classifier_processor, images) == ["normal", "nsfw"]
    checker, checker_processor, classifier, classifier_processor = safety_models(1.0)
    assert _checker_flags(checker, checker_processor, images)[1] == [False, False]
    assert _classifier_labels(classifier, classifier_processor, images) == ["normal", "normal"]


def test_checker_in_bfloat16_keeps_clear_verdicts(safety_models):
    # bfloat16 blurs the boundary by about one grey level, so only images well away from it are checked.
    checker, processor, _, _ = safety_models(0.5, torch.bfloat16)
    images = [IMAGES["black"], IMAGES["gray191"], IMAGES["stripes"], IMAGES["white"], IMAGES["gray63"]]
    assert _checker_flags(checker, processor, images)[1] == [False, True, False, True, False]


def test_thresholds_must_be_finite(tmp_path):
    with pytest.raises(ValueError, match="finite"):
        tiny.write_safety_checker(tmp_path, float("nan"))
