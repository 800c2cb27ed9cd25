"""Every LoRA format converts to the exact ΔW it should cause; unsupported and malformed files fail clearly, whole.

Each fixture file comes with the ΔW it must make on every layer it targets (testkit/lora_fixtures.py). The test
converts it, attaches it to the tiny dev pipeline (transformer, CLIP and T5) and compares peft's
`get_delta_weight` on each layer carrying the adapter with that expectation, so a conversion that silently drops,
mis-splits or mis-scales a layer fails here. FLUX.1-size files from each trainer are in test_lora_formats_full.py.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from generation.pipelines import FluxModels
from lora_loader import adapters
from lora_loader.errors import LoraError
from lora_loader.formats import load_lora_state_dict
from lora_loader.targets import LoraTargets
from testkit import lora_fixtures
from weights.layout import FLUX_DEV, FLUX_SCHNELL

ADAPTER = "under_test"


@pytest.fixture(scope="module")
def models(tiny_weights) -> FluxModels:
    return FluxModels.load(
        tiny_weights / FLUX_DEV.name, tiny_weights / FLUX_SCHNELL.name, torch.device("cpu"), torch.float32
    )


@pytest.fixture(scope="module")
def dev(models):
    return models.pipeline("dev", "txt2img")


@pytest.fixture(scope="module")
def targets(dev) -> LoraTargets:
    return LoraTargets.of_pipeline(dev)


def shapes(pipe):
    return lora_fixtures.linear_shapes(pipe.transformer), lora_fixtures.linear_shapes(pipe.text_encoder)


def assert_same_deltas(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for layer, delta in expected.items():
        error = (actual[layer].double() - delta.double()).norm() / delta.double().norm()
        assert error < 1e-5, f"{layer}: relative error {error:.2e}"


@pytest.mark.parametrize("name", sorted(lora_fixtures.FORMATS))
def test_format_converts_to_expected_delta(dev, targets, tmp_path, name):
    fixture = lora_fixtures.write_fixture(name, tmp_path, *shapes(dev))
    converted = load_lora_state_dict(fixture.path, targets)
    assert converted.format == fixture.format
    try:
        adapters.attach(dev, converted, ADAPTER)
        assert_same_deltas(lora_fixtures.attached_deltas(dev, ADAPTER), fixture.expected)
    finally:
        adapters.detach(dev, ADAPTER)
        adapters.unload(dev)


@pytest.mark.parametrize("name", sorted(lora_fixtures.UNSUPPORTED))
def test_unsupported_file_is_refused_clearly(targets, tmp_path, name):
    path, message = lora_fixtures.write_unsupported(name, tmp_path)
    with pytest.raises(LoraError, match=re.escape(message)):
        load_lora_state_dict(path, targets)


def test_file_that_is_not_safetensors_is_refused(targets, tmp_path):
    path = tmp_path / "lora.safetensors"
    path.write_bytes(b"PK\x03\x04 not a safetensors header")
    with pytest.raises(LoraError, match="not a readable .safetensors file"):
        load_lora_state_dict(path, targets)


@pytest.mark.parametrize("model", ["dev", "schnell"])
def test_targets_name_every_linear_layer(models, model):
    transformer = models.transformer(model)
    targets = LoraTargets.of_modules(transformer=transformer)
    assert set(targets.linear_layers()) == set(lora_fixtures.linear_shapes(transformer))


def test_dev_only_layers_refuse_the_whole_file_on_schnell(models, dev, tmp_path):
    """A dev LoRA with guidance-embedder layers cannot be applied whole to schnell, so it is not applied at all."""
    fixture = lora_fixtures.write_fixture("kohya_all_layers", tmp_path, *shapes(dev))
    assert any("guidance_embedder" in key for key in fixture.expected)
    schnell = LoraTargets.of_pipeline(models.pipeline("schnell", "txt2img"))
    with pytest.raises(LoraError, match=r"guidance-embedder layer\(s\) .* FLUX.1 \[schnell\] does not have"):
        load_lora_state_dict(fixture.path, schnell)


def rewritten(tmp_path, dev, change, name: str = "diffusers", metadata: dict | None = None):
    """A fixture file with `change(tensors)` applied (it edits the dict in place)."""
    fixture = lora_fixtures.write_fixture(name, tmp_path / "source", *shapes(dev))
    tensors = load_file(fixture.path)
    change(tensors)
    path = tmp_path / "changed.safetensors"
    save_file(tensors, path, metadata=metadata)
    return path


def first(tensors: dict, suffix: str) -> str:
    return sorted(key for key in tensors if key.endswith(suffix))[0]


def put(suffix: str, make):
    def change(tensors):
        key = first(tensors, suffix)
        tensors[key] = make(tensors[key])

    return change


MALFORMED = {  # name: (fixture, change, what the message must say)
    "nan": ("diffusers", put(".lora_B.weight", lambda t: t.index_fill(0, torch.tensor([0]), float("nan"))), "NaN"),
    "inf": ("kohya", put(".lora_down.weight", lambda t: t.index_fill(1, torch.tensor([1]), float("inf"))), "infinite"),
    "nan_alpha": ("kohya", put(".alpha", lambda t: torch.tensor(float("nan"))), "NaN"),
    "one_dimensional_lora_A": ("diffusers", put(".lora_A.weight", lambda t: t[0]), "is a matrix"),
    "three_dimensional_lora_B": ("diffusers", put(".lora_B.weight", lambda t: t[None]), "is a matrix"),
    "ranks_differ": ("kohya", put(".lora_up.weight", lambda t: torch.cat([t, t], dim=1)), "do not fit together"),
    "alpha_with_two_elements": ("kohya", put(".alpha", lambda t: torch.tensor([4.0, 4.0])), "a single number"),
    "alpha_zero": ("kohya", put(".alpha", lambda t: torch.tensor(0.0)), "an alpha of 0"),
    "integer_weights": ("diffusers", put(".lora_A.weight", lambda t: t.to(torch.int32)), "int32 values"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_weights_are_one_clear_error_naming_the_tensor(dev, targets, tmp_path, case):
    name, change, message = MALFORMED[case]
    fixture = lora_fixtures.write_fixture(name, tmp_path / "source", *shapes(dev))
    tensors = load_file(fixture.path)
    change(tensors)
    changed = {key for key, value in load_file(fixture.path).items() if not torch.equal(value, tensors[key])}
    path = tmp_path / "changed.safetensors"
    save_file(tensors, path)
    with pytest.raises(LoraError, match=re.escape(message)) as error:
        load_lora_state_dict(path, targets)
    assert any(key in str(error.value) for key in changed), "the message names the tensor"


@pytest.mark.parametrize(
    "config, message",
    [
        ("{not json", "lora_adapter_metadata entry that is not a JSON object"),
        ('["a list"]', "lora_adapter_metadata entry that is not a JSON object"),
        (json.dumps({"transformer.lora_alpha": "eight"}), "transformer.lora_alpha is 'eight', not a number"),
        (json.dumps({"transformer.lora_alpha": 8, "transformer.alpha_pattern": ["a"]}), "alpha_pattern is a list"),
        (json.dumps({"transformer.alpha_pattern": {"x": None}}), "alpha_pattern['x'] is None"),
        (json.dumps({"transformer.use_rslora": "yes"}), "use_rslora is 'yes'"),
    ],
)
def test_malformed_adapter_metadata_is_a_clear_error(dev, targets, tmp_path, config, message):
    path = rewritten(tmp_path, dev, lambda tensors: None, metadata={"lora_adapter_metadata": config})
    with pytest.raises(LoraError, match=re.escape(message)):
        load_lora_state_dict(path, targets)


@pytest.mark.parametrize(
    "key, message",
    [
        ("transformer.x_embedder.diff", "full-weight differences (.diff)"),
        ("bundle_emb.tok.clip_l", "bundled textual-inversion embeddings"),
        ("transformer.x_embedder.lora_mid.weight", "LoCon Tucker factors"),
        ("transformer.x_embedder.weight", "tensors that are not LoRA weights"),
    ],
)
def test_a_tensor_no_path_can_apply_refuses_the_whole_file(dev, targets, tmp_path, key, message):
    path = rewritten(tmp_path, dev, lambda tensors: tensors.update({key: torch.ones(3)}))
    with pytest.raises(LoraError, match=re.escape(message)) as error:
        load_lora_state_dict(path, targets)
    assert "none of it is applied" in str(error.value) and key in str(error.value)


def test_a_layer_this_model_lacks_refuses_the_whole_file(dev, targets, tmp_path):
    extra = {"transformer.transformer_blocks.7.attn.to_q.lora_A.weight": torch.ones(4, 32)}
    extra["transformer.transformer_blocks.7.attn.to_q.lora_B.weight"] = torch.ones(32, 4)
    path = rewritten(tmp_path, dev, lambda tensors: tensors.update(extra))
    with pytest.raises(LoraError, match=r"1 layer\(s\) that name no layer of this FLUX.1 model .*none of it"):
        load_lora_state_dict(path, targets)


def test_bias_change_without_a_pair_and_clip_embeddings_apply(dev, targets, tmp_path):
    """A ComfyUI bias change on a layer without a low-rank pair, and kohya-named CLIP embedding LoRAs."""
    generator = torch.Generator().manual_seed(3)
    tokens, width = dev.text_encoder.get_input_embeddings().weight.shape
    up, down = torch.randn(tokens, 2, generator=generator), torch.randn(2, width, generator=generator)
    bias = torch.randn(32, generator=generator)
    extra = {
        "lora_te1_text_model_embeddings_token_embedding.lora_up.weight": up,
        "lora_te1_text_model_embeddings_token_embedding.lora_down.weight": down,
        "lora_te1_text_model_embeddings_token_embedding.alpha": torch.tensor(1.0),
        "diffusion_model.img_in.diff_b": bias,  # img_in has no low-rank pair in this file
    }
    path = rewritten(tmp_path, dev, lambda tensors: tensors.update(extra), name="comfyui")
    converted = load_lora_state_dict(path, targets)
    assert converted.embeddings("text_encoder") == ["embeddings.token_embedding"]
    try:
        adapters.attach(dev, converted, ADAPTER)
        deltas = lora_fixtures.attached_deltas(dev, ADAPTER)
        assert torch.allclose(deltas["text_encoder.embeddings.token_embedding"], up @ down / 2, atol=1e-5)
        x_embedder = dev.transformer.x_embedder
        assert torch.equal(x_embedder.lora_B[ADAPTER].bias, bias)
        assert not x_embedder.lora_B[ADAPTER].weight.any(), "a bias change alone carries a zero low-rank pair"
        proj = dev.transformer.transformer_blocks[0].attn.to_out[0]
        assert not proj.lora_B[ADAPTER].bias.any(), "layers without a bias change get a zero one"
    finally:
        adapters.detach(dev, ADAPTER)
        adapters.unload(dev)


def test_a_diff_b_needs_the_layers_own_bias_but_a_peft_lora_bias_does_not(dev, targets, tmp_path):
    """T5's Linear layers have no bias: ComfyUI's diff_b (added to that bias) cannot apply there, PEFT's
    lora_B.bias (the LoRA's own bias) can."""
    t5 = "encoder.block.0.layer.0.SelfAttention.q"
    pair = {
        f"text_encoder_2.{t5}.lora_A.weight": torch.ones(2, 32),
        f"text_encoder_2.{t5}.lora_B.weight": torch.ones(32, 2),
    }
    refused = rewritten(tmp_path / "a", dev, lambda t: t.update(pair | {f"text_encoder_2.{t5}.diff_b": torch.ones(32)}))
    with pytest.raises(LoraError, match="which has no bias"):
        load_lora_state_dict(refused, targets)
    applied = rewritten(
        tmp_path / "b", dev, lambda t: t.update(pair | {f"text_encoder_2.{t5}.lora_B.bias": torch.ones(32)})
    )
    assert load_lora_state_dict(applied, targets).has_bias("text_encoder_2")
