"""Every generation mode through the real diffusers pipelines on the tiny weights (CPU, fp32), and the result
each prediction returns (what ran, as data: the seed, steps, path, LoRA events, stage times, metrics)."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

from generation import logs, sizes
from generation import service as service_module
from generation.cancel import CancelFlag, PredictionCancelled
from generation.errors import UserInputError
from generation.request import GenerationRequest, LoraChoice
from testkit import lora_fixtures
from testkit.fakes.lora_servers import FakeServer, lora_bytes
from testkit.helpers import digest, generate, solid_image

METRIC_NAMES = {
    "seed",
    "mode",
    "model",
    "width",
    "height",
    "steps",
    "steps_requested",
    "outputs",
    "outputs_flagged",
    "path",
    "path_reason",
    "loras",
    "lora_adapters_resident",
    "stage_seconds",
}


def run(service, **fields):
    """The GenerationResult of one request (testkit.helpers.generate returns only the files)."""
    fields = {"prompt": "a photo of TOK", "num_inference_steps": 2, "megapixels": "0.25", **fields}
    return service.generate(GenerationRequest(**fields))


# Sizes come from the plan, which does not depend on the model (test_request_rules checks the whole table for
# both settings); every ratio is rendered at 0.25 MP on both models, and at 1 MP the square, widest and tallest
# ones: 1 MP renders are the slow part of this test (test_compiled_path runs every 1 MP size through a transformer).
RATIOS_AT = {"1": ("1:1", "21:9", "9:21"), "0.25": tuple(sizes.ASPECT_RATIOS)}


@pytest.mark.parametrize(("model", "megapixels"), [("dev", "1"), ("dev", "0.25"), ("schnell", "0.25")])
def test_every_aspect_ratio_gives_the_table_size(service, model, megapixels):
    for ratio in RATIOS_AT[megapixels]:
        [output] = generate(
            service,
            model=model,
            aspect_ratio=ratio,
            megapixels=megapixels,
            num_inference_steps=1,
            output_format="jpg",  # the size is the point; jpg encodes 1 MP of noise ten times faster than png
            seed=1,
            disable_safety_checker=True,
        )
        assert output.name == "out-0.jpg"
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
    assert [o.digest for o in first] == [o.digest for o in again]
    assert len({o.digest for o in first}) == 3, "different outputs in one batch must differ"
    for index, output in enumerate(first):
        [alone] = generate(service, **{**request, "num_outputs": 1, "seed": 41 + index})
        assert alone.digest == output.digest, f"out-{index} must equal a lone run with seed 41+{index}"


def test_no_seed_is_random_and_logged(service, caplog):
    caplog.set_level("INFO")
    a, b = run(service, output_format="png"), run(service, output_format="png")
    assert a.plan.seed != b.plan.seed and 0 <= a.plan.seed < 2**32
    assert f"Using seed: {a.plan.seed}" in caplog.text, "DESIGN.md: the seed is logged for the person reading"


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
    assert low.digest == high.digest


def test_dev_uses_guidance_and_schnell_ignores_it(service):
    def run(model, guidance):
        return generate(service, model=model, guidance_scale=guidance, megapixels="0.25", seed=9, output_format="png")

    assert run("dev", 1.0)[0].digest != run("dev", 9.0)[0].digest
    assert run("schnell", 1.0)[0].digest == run("schnell", 9.0)[0].digest
    assert run("dev", 3.0)[0].digest != run("schnell", 3.0)[0].digest


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


def test_go_fast_on_cpu_runs_the_plain_path_and_says_why(service):
    fast = run(service, go_fast=True, seed=8, output_format="png")
    assert (fast.path, fast.metrics()["path"]) == ("plain", "plain")
    assert fast.path_reason.startswith("go_fast: fp8 needs a CUDA GPU")
    fast_digest = digest(fast.paths[0].read_bytes())
    plain = run(service, go_fast=False, seed=8, output_format="png")
    assert plain.path_reason == "go_fast is off: float32, uncompiled, LoRAs as adapters"
    assert fast_digest == digest(plain.paths[0].read_bytes()), "the same plain path both times"


def test_the_result_says_what_ran(service):
    result = run(service, seed=77, num_inference_steps=3, aspect_ratio="16:9", num_outputs=2)
    metrics = result.metrics()
    assert set(metrics) == METRIC_NAMES, "README, Metrics: names are a contract"
    assert json.loads(json.dumps(metrics)) == metrics, "JSON values only, as Cog records them"
    assert {k: metrics[k] for k in ("seed", "mode", "model", "width", "height", "steps", "steps_requested")} == {
        "seed": 77,
        "mode": "txt2img",
        "model": "dev",
        "width": 672,
        "height": 384,
        "steps": 3,
        "steps_requested": 3,
    }
    assert (metrics["outputs"], metrics["outputs_flagged"], metrics["loras"]) == (2, 0, [])
    assert set(metrics["stage_seconds"]) == {"encode", "denoise", "safety", "save"}, "no LoRA stage without LoRAs"
    assert all(seconds > 0 for seconds in metrics["stage_seconds"].values())
    assert [p.name for p in result.paths] == ["out-0.webp", "out-1.webp"]


def test_img2img_runs_the_steps_strength_leaves_and_says_so(service, tmp_path, monkeypatch, caplog):
    """0.6 of 10 steps runs 6 (diffusers skips the first 4): counted at the pipeline's step callback."""
    calls = []

    def counting_step_logger(label, total_steps):
        inner = logs.step_logger(label, total_steps)

        def on_step_end(*args):
            calls.append(total_steps)
            return inner(*args)

        return on_step_end

    monkeypatch.setattr(service_module, "step_logger", counting_step_logger)
    caplog.set_level("INFO")
    image = solid_image(tmp_path / "in.png", (64, 64))
    result = run(service, image=image, prompt_strength=0.6, num_inference_steps=10, seed=1)
    assert (result.steps, result.metrics()["steps_requested"], result.plan.mode) == (6, 10, "img2img")
    assert calls == [6] * 6
    assert "6 of 10 steps" in caplog.text  # the plan line a person reads says what runs


def test_flagged_outputs_are_counted(service, monkeypatch):
    monkeypatch.setattr(service.safety, "flagged", lambda images: [i == 1 for i in range(len(images))])
    result = run(service, num_outputs=3, seed=2)
    assert [p.name for p in result.paths] == ["out-0.webp", "out-2.webp"]
    assert (result.flagged, result.metrics()["outputs_flagged"]) == ((1,), 1)


def test_lora_events_say_downloaded_then_cached_and_rescaled(service, tmp_path):
    pipe = service.models.pipeline("dev", "txt2img")
    shapes = lora_fixtures.linear_shapes(pipe.transformer), lora_fixtures.linear_shapes(pipe.text_encoder)
    data = lora_fixtures.write_fixture("diffusers", tmp_path, *shapes, seed=31).path.read_bytes()
    try:
        with FakeServer() as site:
            url = site.add_file("/events.safetensors", data)
            first = run(service, main_lora=LoraChoice(url, 0.7), num_inference_steps=1)
            again = run(service, main_lora=LoraChoice(url, 0.3), num_inference_steps=1)
    finally:
        run(service, num_inference_steps=1)  # no LoRA left for the other tests
    [event] = first.metrics()["loras"]
    assert {k: event[k] for k in ("role", "scale", "fetch", "attach")} == {
        "role": "main",
        "scale": 0.7,
        "fetch": "download",
        "attach": "attached",
    }
    assert event["source"] == url and event["fetch_s"] >= 0
    [event] = again.metrics()["loras"]
    assert (event["fetch"], event["attach"], event["scale"]) == ("cache", "rescaled", 0.3)
    assert first.metrics()["lora_adapters_resident"] == again.metrics()["lora_adapters_resident"] == 1
    assert again.stage_seconds["loras"] > 0


def test_each_prediction_writes_into_a_folder_of_its_own(service):
    """Cog may still be reading one prediction's files while the next one saves (generation/outputs.py)."""
    first = run(service, num_outputs=3, seed=1).paths
    second = run(service, num_outputs=1, seed=1).paths
    assert [p.name for p in first] == ["out-0.webp", "out-1.webp", "out-2.webp"] and all(p.exists() for p in first)
    assert first[0].parent != second[0].parent
    assert first[0].parent.parent == second[0].parent.parent == service.settings.output_dir


def test_a_cancelled_prediction_stops_after_the_step_it_was_cancelled_in(service, caplog):
    """The server cancels the prediction on the GPU through its CancelFlag (generation/gpu_queue.py): the
    denoising callback checks it after every step, so no further step runs and nothing is saved."""
    cancel = CancelFlag()

    class CancelAtStepTwo(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "step 2/20" in record.getMessage():  # logged by the step callback, just before its check
                cancel.set()

    handler = CancelAtStepTwo()
    logging.getLogger("generation").addHandler(handler)
    try:
        with caplog.at_level(logging.INFO), pytest.raises(PredictionCancelled):
            service.generate(GenerationRequest(prompt="x", num_inference_steps=20, megapixels="0.25"), cancel)
    finally:
        logging.getLogger("generation").removeHandler(handler)
    steps = [r.getMessage() for r in caplog.records if " step " in r.getMessage()]
    assert steps[-1].startswith("out-0.webp step 2/20") and len(steps) == 2
    assert "Saving outputs" not in caplog.text


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
