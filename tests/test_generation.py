"""Every generation mode through the real diffusers pipelines on the tiny weights (CPU, fp32)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from generation import sizes
from generation.errors import UserInputError
from generation.request import LoraChoice
from testkit.fakes.lora_servers import FakeServer, lora_bytes
from testkit.helpers import generate, solid_image


@pytest.mark.parametrize("model", ["dev", "schnell"])
@pytest.mark.parametrize("megapixels", ["1", "0.25"])
def test_every_aspect_ratio_gives_the_table_size(service, model, megapixels):
    for ratio in sizes.ASPECT_RATIOS:
        [output] = generate(
            service,
            model=model,
            aspect_ratio=ratio,
            megapixels=megapixels,
            num_inference_steps=1,
            output_format="png",
            seed=1,
            disable_safety_checker=True,
        )
        assert output.name == "out-0.png"
        assert output.image.size == sizes.size_for_aspect_ratio(ratio, megapixels), ratio


@pytest.mark.parametrize(("width", "height", "expected"), [(1000, 300, (1008, 304)), (257, 1440, (256, 1440))])
def test_custom_sizes_are_rounded_to_the_nearest_16(service, width, height, expected):
    [output] = generate(service, aspect_ratio="custom", width=width, height=height, seed=3, output_format="png")
    assert output.image.size == expected


def test_custom_without_height_fails_clearly(service):
    with pytest.raises(UserInputError, match="height is not set"):
        generate(service, aspect_ratio="custom", width=512)


@pytest.mark.parametrize("num_outputs", [1, 2, 3, 4])
def test_num_outputs_files(service, num_outputs):
    outputs = generate(service, num_outputs=num_outputs, megapixels="0.25", seed=5)
    assert [o.name for o in outputs] == [f"out-{i}.webp" for i in range(num_outputs)]


def test_same_seed_same_files_and_each_output_regenerable_alone(service):
    request = dict(num_outputs=3, megapixels="0.25", seed=41, output_format="png")
    first = generate(service, **request)
    again = generate(service, **request)
    assert [o.data for o in first] == [o.data for o in again]
    assert len({o.data for o in first}) == 3, "different outputs in one batch must differ"
    for index, output in enumerate(first):
        [alone] = generate(service, **{**request, "num_outputs": 1, "seed": 41 + index})
        assert alone.data == output.data, f"out-{index} must equal a lone run with seed 41+{index}"


def test_no_seed_is_random_and_logged(service, caplog):
    caplog.set_level("INFO")
    a = generate(service, megapixels="0.25", output_format="png")
    b = generate(service, megapixels="0.25", output_format="png")
    assert a[0].data != b[0].data
    seeds = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Using seed: ")]
    assert len(seeds) == 2 and seeds[0] != seeds[1]


@pytest.mark.parametrize(("fmt", "pil_format"), [("webp", "WEBP"), ("jpg", "JPEG"), ("png", "PNG")])
def test_output_formats(service, fmt, pil_format):
    [output] = generate(service, output_format=fmt, megapixels="0.25", seed=2)
    assert output.name == f"out-0.{fmt}"
    assert output.image.format == pil_format


@pytest.mark.parametrize("fmt", ["webp", "jpg"])
def test_quality_applies_to_lossy_formats(service, fmt):
    low = generate(service, output_format=fmt, output_quality=5, megapixels="0.25", seed=2)[0]
    high = generate(service, output_format=fmt, output_quality=100, megapixels="0.25", seed=2)[0]
    assert len(low.data) < len(high.data)


def test_png_ignores_quality(service):
    low = generate(service, output_format="png", output_quality=0, megapixels="0.25", seed=2)[0]
    high = generate(service, output_format="png", output_quality=100, megapixels="0.25", seed=2)[0]
    assert low.data == high.data


def test_dev_uses_guidance_and_schnell_ignores_it(service):
    def run(model, guidance):
        return generate(service, model=model, guidance_scale=guidance, megapixels="0.25", seed=9, output_format="png")

    assert run("dev", 1.0)[0].data != run("dev", 9.0)[0].data
    assert run("schnell", 1.0)[0].data == run("schnell", 9.0)[0].data
    assert run("dev", 3.0)[0].data != run("schnell", 3.0)[0].data


def test_img2img_output_takes_the_input_size(service, tmp_path):
    image = solid_image(tmp_path / "wide.png", (2000, 1000))
    [output] = generate(service, image=image, aspect_ratio="9:16", megapixels="0.25", seed=4, output_format="png")
    assert output.image.size == (1440, 720)


def test_img2img_strength_changes_how_much_of_the_input_survives(service, tmp_path):
    image = solid_image(tmp_path / "red.png", (128, 128), (230, 20, 20))

    def distance_to_input(strength):
        [output] = generate(
            service, image=image, prompt_strength=strength, num_inference_steps=10, seed=4, output_format="png"
        )
        return np.abs(np.asarray(output.image, float) - np.asarray(Image.open(image), float)).mean()

    assert distance_to_input(0.1) < distance_to_input(1.0)


def test_img2img_with_zero_strength_fails_clearly(service, tmp_path):
    image = solid_image(tmp_path / "in.png", (64, 64))
    with pytest.raises(UserInputError, match="leaves no denoising step to run"):
        generate(service, image=image, prompt_strength=0.0)


def test_unreadable_image_fails_clearly(service, tmp_path):
    bad = tmp_path / "not-an-image.png"
    bad.write_text("<html>nope</html>")
    with pytest.raises(UserInputError, match="could not be read as an image"):
        generate(service, image=bad)


def _inpaint(service, image, mask, seed):
    [output] = generate(service, image=image, mask=mask, prompt_strength=1.0, seed=seed, output_format="png")
    return np.asarray(output.image, dtype=float)


def test_inpainting_black_keeps_and_white_repaints(service, tmp_path):
    image = solid_image(tmp_path / "in.png", (128, 64), (30, 120, 200))
    black = solid_image(tmp_path / "black.png", (128, 64), (0, 0, 0))
    white = solid_image(tmp_path / "white.png", (128, 64), (255, 255, 255))
    # All black keeps every latent, so the seed cannot matter (up to the VAE posterior's 3e-7 std, which
    # may flip a rounding); all white repaints everything, so it must.
    kept = np.abs(_inpaint(service, image, black, 1) - _inpaint(service, image, black, 2))
    repainted = np.abs(_inpaint(service, image, white, 1) - _inpaint(service, image, white, 2))
    assert kept.max() <= 1 and kept.mean() < 0.01, (kept.max(), kept.mean())
    assert repainted.mean() > 10, repainted.mean()


def test_inpainting_mask_is_resized_to_the_image(service, tmp_path):
    image = solid_image(tmp_path / "in.png", (128, 64), (30, 120, 200))
    half = Image.new("RGB", (32, 16), (0, 0, 0))  # a quarter-size mask: left half keep, right half repaint
    half.paste((255, 255, 255), (16, 0, 32, 16))
    half.save(tmp_path / "half.png")
    a, b = _inpaint(service, image, tmp_path / "half.png", 1), _inpaint(service, image, tmp_path / "half.png", 2)
    assert a.shape == (64, 128, 3)
    kept, repainted = np.abs(a - b)[:, :48].mean(), np.abs(a - b)[:, 80:].mean()
    assert kept < repainted / 4, (kept, repainted)


def test_go_fast_on_cpu_runs_the_plain_path_and_says_why(service, caplog):
    caplog.set_level("INFO")
    fast = generate(service, go_fast=True, megapixels="0.25", seed=8, output_format="png")
    plain = generate(service, go_fast=False, megapixels="0.25", seed=8, output_format="png")
    assert fast[0].data == plain[0].data
    assert any(r.getMessage().startswith("go_fast: fp8 needs a CUDA GPU") for r in caplog.records)


def test_logs_name_seed_size_mode_steps_and_stage_times(service, caplog):
    caplog.set_level("INFO")
    generate(service, seed=77, num_inference_steps=3, megapixels="0.25", aspect_ratio="16:9")
    messages = [r.getMessage() for r in caplog.records]
    assert "Using seed: 77" in messages
    assert any(m.startswith("Mode txt2img, model dev, 672x384, 3 steps") for m in messages)
    assert [m.split(" (")[0] for m in messages if " step " in m] == [f"out-0.webp step {i}/3" for i in (1, 2, 3)]
    assert any(m.startswith("Generating out-0.webp took ") for m in messages)
    assert any(m.startswith("Safety check took ") for m in messages)


def test_outputs_of_the_previous_prediction_are_cleaned_up(service):
    generate(service, num_outputs=3, megapixels="0.25", seed=1)
    generate(service, num_outputs=1, megapixels="0.25", seed=1)
    assert sorted(p.name for p in service.settings.output_dir.iterdir()) == ["out-0.webp"]


def test_output_images_decode(service):
    [output] = generate(service, output_format="webp", megapixels="0.25", seed=1)
    Image.open(io.BytesIO(output.data)).load()


def test_a_bad_mask_fails_before_any_lora_is_downloaded(service, tmp_path):
    image = solid_image(tmp_path / "image.png", (64, 64))
    mask = solid_image(tmp_path / "mask.png", (64, 32), (255, 255, 255))
    with FakeServer() as site:
        url = site.add_file("/lora.safetensors", lora_bytes())
        with pytest.raises(UserInputError, match="aspect ratios differ"):
            generate(service, image=image, mask=mask, main_lora=LoraChoice(url, 1.0))
        assert site.requests == [], "the request was refused before its LoRA was fetched"
