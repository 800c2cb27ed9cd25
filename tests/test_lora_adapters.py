"""AdapterManager keeps the LoRA rules: linear scales, re-scale without reload, at most two adapters, clean failures.

The central check is the sequence test: a long-lived pair of models taken through a series of requests must
render, at every step, exactly what freshly loaded models given only that request render. Anything the manager
leaves behind (a stale adapter, a wrong active set, a CLIP layer of a removed LoRA, a drifted weight) shows up
there as a different image.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch

from generation.pipelines import FluxModels
from lora_loader import adapters, text_encoders
from lora_loader.adapters import AdapterManager, LoraSpec, adapter_name
from lora_loader.errors import LoraError
from lora_loader.formats import load_lora_state_dict
from lora_loader.targets import LoraTargets
from testkit import lora_fixtures
from weights.layout import FLUX_DEV, FLUX_SCHNELL

PROMPT, GUIDANCE = lora_fixtures.PROMPT, lora_fixtures.GUIDANCE
render = lora_fixtures.render

# peft's note on every second adapter; two adapters at once is what this suite is about.
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")


def load_models(weights: Path) -> FluxModels:
    return FluxModels.load(weights / FLUX_DEV.name, weights / FLUX_SCHNELL.name, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def loras(tiny_weights, tmp_path_factory) -> dict[str, Path]:
    """A: kohya with CLIP and T5 layers; B: diffusers/PEFT with alphas; BAD: no FLUX layer."""
    folder = tmp_path_factory.mktemp("loras")
    models = load_models(tiny_weights)
    pipe = models.pipeline("dev", "txt2img")
    shapes = lora_fixtures.linear_shapes(pipe.transformer), lora_fixtures.linear_shapes(pipe.text_encoder)
    bad, _ = lora_fixtures.write_unsupported("no_flux_layer", folder)
    return {
        "A": lora_fixtures.write_fixture("kohya_text_encoder", folder, *shapes, seed=1).path,
        "B": lora_fixtures.write_fixture("diffusers", folder, *shapes, seed=2).path,
        "BAD": bad,
    }


@pytest.fixture
def models(tiny_weights) -> FluxModels:
    return load_models(tiny_weights)


@pytest.fixture
def manager(models) -> AdapterManager:
    return AdapterManager(models)


def spec(loras: dict[str, Path], name: str, scale: float = 1.0) -> LoraSpec:
    return LoraSpec(key=f"key-{name}", path=loras[name], scale=scale, source=f"lora-{name}")


def fresh_render(weights: Path, model: str, loras: list[tuple[Path, float]]) -> torch.Tensor:
    """What freshly loaded models render with only these LoRAs, attached without the manager."""
    models = load_models(weights)
    pipe = models.pipeline(model, "txt2img")
    for index, (path, _) in enumerate(loras):
        adapters.attach(pipe, load_lora_state_dict(path, LoraTargets.of_pipeline(pipe)), f"fresh{index}")
    if loras:
        adapters.set_weights(pipe, {f"fresh{i}": scale for i, (_, scale) in enumerate(loras)})
    return render(models, model)


def adapters_in_process(models: FluxModels) -> set[str]:
    """Every adapter name on either transformer or the shared text encoders (CLIP, T5)."""
    names = set()
    for model in ("dev", "schnell"):
        pipe = models.pipeline(model, "txt2img")
        for module in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2):
            names |= text_encoders.adapters(module)  # peft_config's names, whichever the model
    return names


def deltas(models: FluxModels, model: str, key: str) -> dict[str, torch.Tensor]:
    return lora_fixtures.attached_deltas(models.pipeline(model, "txt2img"), adapter_name(key))


def assert_scaled(actual: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], factor: float) -> None:
    assert sorted(actual) == sorted(reference)
    for layer, delta in reference.items():
        assert torch.allclose(actual[layer], factor * delta, rtol=1e-6, atol=1e-9), layer


def test_sequence_matches_fresh_models(models, manager, loras, tiny_weights):
    a, b = spec(loras, "A", 0.8), spec(loras, "B", 1.3)
    sequence = [  # (model, main, extra)
        ("dev", a, None),
        ("dev", b, None),
        ("dev", a, b),
        ("dev", None, None),
        ("dev", b, a),
        ("dev", spec(loras, "A", -0.6), None),
        ("schnell", a, None),
        ("dev", None, b),
    ]
    for step, (model, main, extra) in enumerate(sequence):
        manager.apply(model, main, extra)
        requested = [s for s in (main, extra) if s]
        assert adapters_in_process(models) == {adapter_name(s.key) for s in requested}, f"step {step}"
        image = render(models, model)
        expected = fresh_render(tiny_weights, model, [(s.path, s.scale) for s in requested])
        assert (image - expected).abs().max() < 1e-6, f"step {step}: {model} {requested}"
    assert manager.loads == 7  # step 5 (A again, at another scale) only re-scaled


def test_scale_is_linear_and_multiplier_applies_to_both(models, manager, loras):
    manager.apply("dev", spec(loras, "A"), spec(loras, "B"))
    unit_a, unit_b = deltas(models, "dev", "key-A"), deltas(models, "dev", "key-B")
    assert any(layer.startswith("text_encoder.") for layer in unit_a)  # CLIP layers scale with the rest
    assert any(layer.startswith("text_encoder_2.") for layer in unit_a)  # and T5 layers

    manager.apply("dev", spec(loras, "A", 0.37), spec(loras, "B", -2.0))
    assert_scaled(deltas(models, "dev", "key-A"), unit_a, 0.37)
    assert_scaled(deltas(models, "dev", "key-B"), unit_b, -2.0)

    manager.apply("dev", spec(loras, "A", 0.5), spec(loras, "B", 0.8), multiplier=1.5)  # go_fast
    assert_scaled(deltas(models, "dev", "key-A"), unit_a, 0.75)
    assert_scaled(deltas(models, "dev", "key-B"), unit_b, 1.2)
    assert manager.loads == 2


def test_scale_zero_renders_the_base_model_exactly(models, manager, loras):
    base = render(models, "dev")
    manager.apply("dev", spec(loras, "A", 0.0), spec(loras, "B", 0.0))
    assert torch.equal(render(models, "dev"), base)
    manager.apply("dev", spec(loras, "A", 1.0), None)
    assert not torch.equal(render(models, "dev"), base)


def test_loaded_lora_is_rescaled_not_reloaded_in_either_slot(models, manager, loras, caplog):
    manager.apply("dev", spec(loras, "A"), None)
    manager.apply("dev", spec(loras, "B"), spec(loras, "A", 0.5))  # A moves to the extra slot
    with caplog.at_level(logging.INFO, logger="lora_loader.adapters"):
        manager.apply("dev", spec(loras, "A", 0.9), spec(loras, "B", 0.4))  # and back, B now extra
    assert manager.loads == 2
    assert "LoRA lora-A already loaded; scale 0.9" in caplog.text
    assert "LoRA lora-B already loaded; scale 0.4" in caplog.text
    assert {lora.label for lora in manager.resident} == {"lora-A", "lora-B"}


def test_same_lora_as_main_and_extra_applies_once_at_main_scale(models, manager, loras, caplog):
    manager.apply("dev", spec(loras, "A"), None)
    unit = deltas(models, "dev", "key-A")
    with caplog.at_level(logging.WARNING, logger="lora_loader.adapters"):
        manager.apply("dev", spec(loras, "A", 0.6), spec(loras, "A", 1.3))
    assert "applying it once, at the main scale 0.6" in caplog.text
    assert adapters_in_process(models) == {adapter_name("key-A")}
    assert_scaled(deltas(models, "dev", "key-A"), unit, 0.6)


def test_extra_alone_applies_alone(models, manager, loras):
    manager.apply("dev", None, spec(loras, "B"))
    unit = deltas(models, "dev", "key-B")
    manager.apply("dev", None, spec(loras, "B", 0.7))
    assert adapters_in_process(models) == {adapter_name("key-B")}
    assert_scaled(deltas(models, "dev", "key-B"), unit, 0.7)


def test_file_with_no_flux_layer_fails_clearly_and_leaves_the_model_clean(models, manager, loras, tiny_weights):
    manager.apply("dev", spec(loras, "A"), None)
    with pytest.raises(LoraError, match=re.escape("looks like a diffusers/PEFT LoRA")) as error:
        manager.apply("dev", spec(loras, "A"), spec(loras, "BAD"))
    assert str(error.value).startswith("LoRA lora-BAD: "), "with two LoRAs, the message names the failing one"
    assert adapters_in_process(models) == {adapter_name("key-A")}

    manager.apply("dev", spec(loras, "B", 0.5), None)
    expected = fresh_render(tiny_weights, "dev", [(loras["B"], 0.5)])
    assert (render(models, "dev") - expected).abs().max() < 1e-6


@pytest.mark.filterwarnings("ignore:Adapter .* was active which is now deleted")
def test_load_failing_half_way_leaves_no_trace(models, manager, loras, tiny_weights, monkeypatch):
    """A's transformer part attached, then its text-encoder part failed: A's transformer part must go too, B stays,
    and the user reads plain words, not the library's exception."""

    def fail(*args, **kwargs):
        raise RuntimeError("injected failure while loading the text encoder")

    manager.apply("dev", spec(loras, "B"), None)
    with monkeypatch.context() as patch:
        patch.setattr(text_encoders, "set_peft_model_state_dict", fail)
        with pytest.raises(LoraError, match="passed every check but could not be attached") as error:
            manager.apply("dev", spec(loras, "B"), spec(loras, "A"))
    assert "injected" not in str(error.value)
    assert adapters_in_process(models) == {adapter_name("key-B")}
    assert deltas(models, "dev", "key-A") == {}

    manager.apply("dev", spec(loras, "B", 0.5), spec(loras, "A"))
    expected = fresh_render(tiny_weights, "dev", [(loras["B"], 0.5), (loras["A"], 1.0)])
    assert (render(models, "dev") - expected).abs().max() < 1e-6


def test_log_lines_say_what_happened(models, manager, loras, caplog):
    with caplog.at_level(logging.INFO, logger="lora_loader.adapters"):
        manager.apply("dev", spec(loras, "A", 0.5), None, multiplier=1.5)
        manager.apply("dev", None, None)
    loaded = r"Loaded LoRA lora-A \(kohya sd-scripts, \d+ transformer layers \+ 6 CLIP-L layers \+ 1 T5-XXL layers\) in"
    assert re.search(loaded, caplog.text)
    assert "LoRA scales: lora-A 0.75 (LoRA scales x1.5 for go_fast)" in caplog.text
    assert "Removed LoRA lora-A" in caplog.text
