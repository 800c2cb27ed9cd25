"""The input rules of docs/DESIGN.md ("Behaviour rules") that need no model: sizes, rounding, seeds, validation."""

from __future__ import annotations

import pytest

from generation import sizes
from generation.errors import UserInputError
from generation.request import GenerationRequest, plan, steps_that_run
from generation.seeds import resolve_seed

REFERENCE_TABLE = {  # reference/cog-flux-anchor.md §2: (1 MP, 0.25 MP)
    "1:1": ((1024, 1024), (512, 512)),
    "16:9": ((1344, 768), (672, 384)),
    "9:16": ((768, 1344), (384, 672)),
    "21:9": ((1536, 640), (768, 320)),
    "9:21": ((640, 1536), (320, 768)),
    "3:2": ((1216, 832), (608, 416)),
    "2:3": ((832, 1216), (416, 608)),
    "4:5": ((896, 1088), (448, 544)),
    "5:4": ((1088, 896), (544, 448)),
    "3:4": ((896, 1152), (448, 576)),
    "4:3": ((1152, 896), (576, 448)),
}


def test_aspect_table_is_the_reference_table():
    assert set(sizes.ASPECT_RATIOS) == set(REFERENCE_TABLE)
    for ratio, (full, quarter) in REFERENCE_TABLE.items():
        assert sizes.size_for_aspect_ratio(ratio, "1") == full
        assert sizes.size_for_aspect_ratio(ratio, "0.25") == quarter


def test_schema_choices_match_the_table():
    import predict

    assert predict.ASPECT_RATIO_CHOICES == [*sizes.ASPECT_RATIOS, "custom"]
    assert tuple(predict.MEGAPIXELS_CHOICES) == sizes.MEGAPIXELS


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1000, 1008), (1016, 1024), (1015, 1008), (1017, 1024), (256, 256), (263, 256), (264, 272), (1440, 1440)],
)
def test_custom_sizes_round_to_the_nearest_16_halves_up(value, expected):
    assert sizes.round_to_nearest_16(value) == expected


@pytest.mark.parametrize(("width", "height", "missing"), [(None, 512, "width"), (512, None, "height")])
def test_custom_without_a_side_is_a_clear_error(width, height, missing):
    with pytest.raises(UserInputError, match=f"aspect_ratio is 'custom' but {missing} is not set"):
        plan(GenerationRequest(prompt="x", aspect_ratio="custom", width=width, height=height))
    with pytest.raises(UserInputError, match="width and height are not set"):
        plan(GenerationRequest(prompt="x", aspect_ratio="custom"))


def test_custom_ignores_megapixels():
    resolved = plan(GenerationRequest(prompt="x", aspect_ratio="custom", width=1000, height=300, megapixels="0.25"))
    assert (resolved.width, resolved.height) == (1008, 304)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1024, 1024), (1024, 1024)),
        ((2880, 1440), (1440, 720)),
        ((1000, 3000), (480, 1440)),
        ((100, 50), (112, 64)),
        ((1, 1), (16, 16)),
        ((1441, 1441), (1440, 1440)),
    ],
)
def test_input_image_size_fits_1440_and_rounds_up_to_16(size, expected):
    assert sizes.size_for_input_image(*size) == expected


def test_image_modes_ignore_aspect_ratio_and_custom_sides():
    request = GenerationRequest(prompt="x", image="in.png", aspect_ratio="custom", megapixels="0.25")
    resolved = plan(request, input_image_size=(640, 480))
    assert (resolved.mode, resolved.width, resolved.height) == ("img2img", 640, 480)
    assert plan(GenerationRequest(prompt="x", image="i", mask="m"), (64, 64)).mode == "inpaint"


def test_mask_without_image_is_a_clear_error():
    with pytest.raises(UserInputError, match="mask was given without image"):
        plan(GenerationRequest(prompt="x", mask="mask.png"))


def test_steps_that_run_follow_diffusers():
    assert steps_that_run(28, 0.8) == 23
    assert steps_that_run(28, 1.0) == 28
    assert steps_that_run(1, 0.01) == 1
    assert steps_that_run(28, 0.0) == 0


def test_steps_that_run_are_what_the_flux_img2img_and_inpaint_pipelines_run():
    """Against diffusers' own get_timesteps, over every step count and strength in 0.01 steps; this also pins
    the README's figures: 0.6 of 28 runs 17, 0.03 of 28 runs 1, only strength 0 runs none."""
    from types import SimpleNamespace

    from diffusers import FlowMatchEulerDiscreteScheduler, FluxImg2ImgPipeline, FluxInpaintPipeline

    scheduler = FlowMatchEulerDiscreteScheduler()
    pipelines = (SimpleNamespace(scheduler=scheduler),)
    for steps in range(1, 51):
        scheduler.set_timesteps(steps)
        for hundredths in range(101):
            strength = hundredths / 100
            for pipeline_class in (FluxImg2ImgPipeline, FluxInpaintPipeline):
                _, diffusers_steps = pipeline_class.get_timesteps(*pipelines, steps, strength, "cpu")
                assert steps_that_run(steps, strength) == diffusers_steps, (steps, strength)
            assert (steps_that_run(steps, strength) == 0) == (strength == 0)
    assert (steps_that_run(28, 0.6), steps_that_run(28, 0.03)) == (17, 1)


def test_the_plan_knows_the_steps_that_run():
    image_plan = plan(GenerationRequest(prompt="x", image="i", prompt_strength=0.6), (64, 64))
    assert (image_plan.num_inference_steps, image_plan.steps_to_run) == (28, 17)
    assert plan(GenerationRequest(prompt="x", prompt_strength=0.6)).steps_to_run == 28, "txt2img runs them all"


def test_strength_that_leaves_no_step_is_explained():
    with pytest.raises(UserInputError, match="leaves no denoising step to run"):
        plan(GenerationRequest(prompt="x", image="i", prompt_strength=0.0), (64, 64))


def test_seeds():
    assert resolve_seed(1234, 4) == 1234
    assert resolve_seed(0, 1) == 0
    randoms = {resolve_seed(None, 1) for _ in range(20)}
    assert len(randoms) > 15 and all(0 <= s < 2**32 for s in randoms)
    assert 0 <= resolve_seed(-1, 1) < 2**32
    with pytest.raises(UserInputError, match="seed must be at most"):
        resolve_seed(2**63 - 2, 4)


def test_schnell_ignores_guidance_and_uses_256_t5_tokens():
    resolved = plan(GenerationRequest(prompt="x", model="schnell", guidance_scale=7))
    assert (resolved.guidance_scale, resolved.max_sequence_length) == (0.0, 256)
    resolved = plan(GenerationRequest(prompt="x", model="dev", guidance_scale=7))
    assert (resolved.guidance_scale, resolved.max_sequence_length) == (7, 512)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_outputs", 5),
        ("num_outputs", 0),
        ("num_inference_steps", 51),
        ("guidance_scale", -1),
        ("prompt_strength", 1.5),
        ("output_quality", 101),
        ("model", "pro"),
        ("output_format", "gif"),
    ],
)
def test_out_of_range_inputs_are_rejected_in_process_too(field, value):
    with pytest.raises(UserInputError, match=field):
        plan(GenerationRequest(prompt="x", **{field: value}))


@pytest.mark.parametrize("name", ["num_outputs", "num_inference_steps", "seed", "output_quality", "width", "height"])
def test_integer_inputs_sent_as_whole_floats_become_ints(name):
    """JSON has one number type: the schema accepts 2.0 and 1e3 as integers, so run() can receive floats."""
    value = getattr(GenerationRequest(prompt="x", **{name: 2.0 if name != "seed" else 1e3}), name)
    assert type(value) is int and value == (2 if name != "seed" else 1000)


@pytest.mark.parametrize("value", [2.5, float("nan"), float("inf"), True, "2"])
def test_integer_inputs_that_are_not_whole_numbers_are_refused_by_name(value):
    with pytest.raises(UserInputError, match=r"^num_outputs must be a whole number, got "):
        GenerationRequest(prompt="x", num_outputs=value)
