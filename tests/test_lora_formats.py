"""Every LoRA format converts to the exact ΔW it should cause; unsupported files fail with a clear message.

Each fixture file comes with the ΔW it must make on every layer it targets (testkit/lora_fixtures.py). The test
converts it, loads it with diffusers onto the tiny dev pipeline and compares peft's `get_delta_weight` on each
layer carrying the adapter with that expectation, so a conversion that silently drops, mis-splits or mis-scales
a layer fails here.
"""

from __future__ import annotations

import logging
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from generation.pipelines import FluxModels
from lora_loader.errors import LoraError
from lora_loader.formats import BFL_PEFT, KOHYA, FluxLayout, convert_lora_state_dict, load_lora_state_dict
from testkit import lora_fixtures
from weights.layout import FLUX_DEV, FLUX_SCHNELL

ADAPTER = "under_test"


@pytest.fixture(scope="module")
def models(tiny_weights) -> FluxModels:
    return FluxModels.load(
        tiny_weights / FLUX_DEV.name, tiny_weights / FLUX_SCHNELL.name, torch.device("cpu"), torch.float32
    )


def assert_same_deltas(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for layer, delta in expected.items():
        error = (actual[layer].double() - delta.double()).norm() / delta.double().norm()
        assert error < 1e-5, f"{layer}: relative error {error:.2e}"


@pytest.mark.parametrize("name", sorted(lora_fixtures.FORMATS))
def test_format_converts_to_expected_delta(models, tmp_path, name):
    pipe = models.pipeline("dev", "txt2img")
    fixture = lora_fixtures.write_fixture(
        name, tmp_path, lora_fixtures.linear_shapes(pipe.transformer), lora_fixtures.linear_shapes(pipe.text_encoder)
    )
    converted = load_lora_state_dict(fixture.path, pipe.transformer.config)
    assert converted.format == fixture.format
    pipe.load_lora_weights(converted.state_dict, adapter_name=ADAPTER)
    try:
        assert_same_deltas(lora_fixtures.attached_deltas(pipe, ADAPTER), fixture.expected)
    finally:
        pipe.unload_lora_weights()


@pytest.mark.parametrize("name", sorted(lora_fixtures.UNSUPPORTED))
def test_unsupported_file_is_refused_clearly(models, tmp_path, name):
    path, message = lora_fixtures.write_unsupported(name, tmp_path)
    with pytest.raises(LoraError, match=re.escape(message)):
        load_lora_state_dict(path, models.transformer("dev").config)


def test_file_that_is_not_safetensors_is_refused(models, tmp_path):
    path = tmp_path / "lora.safetensors"
    path.write_bytes(b"PK\x03\x04 not a safetensors header")
    with pytest.raises(LoraError, match="not a readable .safetensors file"):
        load_lora_state_dict(path, models.transformer("dev").config)


@pytest.mark.parametrize("model", ["dev", "schnell"])
def test_layout_names_every_linear_layer(models, model):
    transformer = models.transformer(model)
    layout = FluxLayout.from_config(transformer.config)
    assert layout.linear_layers() == set(lora_fixtures.linear_shapes(transformer))


def test_dev_only_layers_are_dropped_on_schnell_and_said(models, tmp_path, caplog):
    dev = models.pipeline("dev", "txt2img")
    fixture = lora_fixtures.write_fixture(
        "kohya_all_layers", tmp_path, lora_fixtures.linear_shapes(dev.transformer), {}
    )
    with caplog.at_level(logging.WARNING, logger="lora_loader.formats"):
        converted = load_lora_state_dict(fixture.path, models.transformer("schnell").config)
    assert not any("guidance_embedder" in key for key in converted.state_dict)
    assert any("guidance_embedder" in key for key in fixture.expected)
    assert "this FLUX.1 model does not have" in caplog.text


def test_our_bfl_converter_matches_diffusers_at_flux1_width():
    """At FLUX.1's real width diffusers' kohya converter handles linear1: ours must agree with it exactly."""
    config = {"num_attention_heads": 24, "attention_head_dim": 128, "num_layers": 1, "num_single_layers": 1}
    config["guidance_embeds"] = True
    generator = torch.Generator().manual_seed(1)
    layers = {"single_blocks.0.linear1": 3 * 3072 + 12288, "double_blocks.0.img_attn.qkv": 3 * 3072}
    kohya, bfl_peft = {}, {}
    for layer, rows in layers.items():
        down, up = torch.randn(2, 3072, generator=generator), torch.randn(rows, 2, generator=generator)
        flat = "lora_unet_" + layer.replace(".", "_")
        kohya |= {f"{flat}.lora_down.weight": down, f"{flat}.lora_up.weight": up, f"{flat}.alpha": torch.tensor(1.0)}
        dotted = f"diffusion_model.{layer}"
        bfl_peft |= {
            f"{dotted}.lora_A.weight": down,
            f"{dotted}.lora_B.weight": up,
            f"{dotted}.alpha": torch.tensor(1.0),
        }

    theirs = convert_lora_state_dict(kohya, config)  # kohya at FLUX.1 width: diffusers' converter
    ours = convert_lora_state_dict(bfl_peft, config)  # BFL-named PEFT: ours
    assert (theirs.format, ours.format) == (KOHYA, BFL_PEFT)
    probe = torch.randn(3072, 3, generator=generator, dtype=torch.float64)
    assert sorted(applied(theirs.state_dict, probe)) == sorted(applied(ours.state_dict, probe))
    for layer, result in applied(theirs.state_dict, probe).items():
        assert torch.allclose(applied(ours.state_dict, probe)[layer], result, rtol=1e-6, atol=1e-9), layer


def applied(state_dict: dict[str, torch.Tensor], probe: torch.Tensor) -> dict[str, torch.Tensor]:
    """ΔW @ probe per layer, without building the (large) ΔW."""
    results = {}
    for key, lora_a in state_dict.items():
        if key.endswith(".lora_A.weight"):
            lora_b = state_dict[key.replace(".lora_A.", ".lora_B.")]
            results[key.removesuffix(".lora_A.weight")] = lora_b.double() @ (lora_a.double() @ probe)
    return results


@pytest.mark.parametrize("metadata", ["{not json", '["a list"]'])
def test_unreadable_adapter_metadata_is_a_clear_error(models, tmp_path, metadata):
    pipe = models.pipeline("dev", "txt2img")
    shapes = lora_fixtures.linear_shapes(pipe.transformer), lora_fixtures.linear_shapes(pipe.text_encoder)
    fixture = lora_fixtures.write_fixture("diffusers", tmp_path, *shapes)
    path = tmp_path / "bad-metadata.safetensors"
    save_file(load_file(fixture.path), path, metadata={"lora_adapter_metadata": metadata})
    with pytest.raises(LoraError, match="lora_adapter_metadata entry that is not a JSON object"):
        load_lora_state_dict(path, pipe.transformer.config)
