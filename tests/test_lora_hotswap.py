"""HotswapAdapterManager: LoRAs swapped into two fixed slots render what plain adapters render.

The reference for every image is a freshly loaded, uncompiled pipeline given only that request through the plain
`AdapterManager`. That the slots never make a compiled transformer recompile, and that compiled graphs render
what the plain path renders after a sequence of swaps, re-scales, two LoRAs and model switches, is tested where
the server compiles them: tests/test_compiled_path.py (and, on a GPU with inductor, script/gpu-check's
`recompiles` phase).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from generation.pipelines import FluxModels
from lora_loader import hotswap
from lora_loader.adapters import AdapterManager, LoraSpec
from lora_loader.errors import LoraError
from lora_loader.hotswap import SLOTS, HotswapAdapterManager, NotHotswappable
from testkit import lora_fixtures
from weights.layout import FLUX_DEV, FLUX_SCHNELL

PROMPT, GUIDANCE = lora_fixtures.PROMPT, lora_fixtures.GUIDANCE
render = lora_fixtures.render
MAX_RANK = 16  # above every fixture's rank (4; kohya's block-diagonal qkv is 12 in the file, 4 per part)

pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")


def load_models(weights: Path, device: str = "cpu") -> FluxModels:
    return FluxModels.load(weights / FLUX_DEV.name, weights / FLUX_SCHNELL.name, torch.device(device), torch.float32)


@pytest.fixture(scope="module")
def loras(tiny_weights, tmp_path_factory) -> dict[str, lora_fixtures.LoraFixture]:
    """A: kohya on every layer, ranks 4 and 12, alphas 1-5; B: diffusers with alphas and non-block layers;
    C: ai-toolkit fp16 on every block layer; X: XLabs, attention only (it lacks most of B's layers, which a swap
    into B's slot must zero); TE: kohya with CLIP layers; BAD: no FLUX layer."""
    folder = tmp_path_factory.mktemp("hotswap-loras")
    pipe = load_models(tiny_weights).pipeline("dev", "txt2img")
    shapes = lora_fixtures.linear_shapes(pipe.transformer), lora_fixtures.linear_shapes(pipe.text_encoder)
    names = {"A": "kohya_all_layers", "B": "diffusers", "C": "ai_toolkit", "X": "xlabs", "TE": "kohya_text_encoder"}
    fixtures = {}
    for seed, (key, name) in enumerate(names.items(), start=1):
        fixtures[key] = lora_fixtures.write_fixture(name, folder, *shapes, seed=seed)
    bad, _ = lora_fixtures.write_unsupported("no_flux_layer", folder)
    return fixtures | {"BAD": lora_fixtures.LoraFixture(bad, "", {})}


@pytest.fixture
def models(tiny_weights) -> FluxModels:
    return load_models(tiny_weights)


@pytest.fixture
def manager(models) -> HotswapAdapterManager:
    manager = HotswapAdapterManager(models)
    manager.prepare(("dev", "schnell"), max_rank=MAX_RANK)
    return manager


def spec(loras, name: str, scale: float = 1.0) -> LoraSpec:
    return LoraSpec(key=f"key-{name}", path=loras[name].path, scale=scale, source=f"lora-{name}")


def plain_render(weights: Path, model, main, extra, multiplier=1.0, device="cpu") -> torch.Tensor:
    """What fresh, uncompiled models render with only this request, through the plain AdapterManager."""
    models = load_models(weights, device)
    AdapterManager(models).apply(model, main, extra, multiplier=multiplier)
    return render(models, model)


def slot_deltas(models: FluxModels, model: str, slot: str) -> dict[str, torch.Tensor]:
    """ΔW (scale included) of `slot` on every layer of the transformer, by "transformer.<layer>"."""
    layers = models.transformer(model).named_modules()
    return {
        f"transformer.{name}": layer.get_delta_weight(slot) for name, layer in layers if isinstance(layer, LoraLayer)
    }


def slot_of(manager: HotswapAdapterManager, model: str, label: str) -> str:
    (slot,) = [lora.adapter for lora in manager.resident if lora.model == model and lora.label == label]
    return slot


def assert_slot_holds(deltas: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], factor: float) -> None:
    """Each layer the LoRA changes carries factor × its ΔW; every other layer carries exactly nothing."""
    assert set(expected) <= set(deltas)
    for layer, delta in deltas.items():
        if layer in expected:
            assert torch.allclose(delta, factor * expected[layer], rtol=1e-5, atol=1e-7), layer
        else:
            assert not delta.any(), layer


def assert_only_slots(models: FluxModels, manager: HotswapAdapterManager) -> None:
    """No adapter but the two slots on either transformer, none on the text encoder, at most two LoRAs in all."""
    for model in ("dev", "schnell"):
        assert models.pipeline(model, "txt2img").get_list_adapters() == {"transformer": list(SLOTS)}
    assert len(manager.resident) <= len(SLOTS)


def test_sequence_matches_fresh_plain_models(models, manager, loras, tiny_weights):
    a, b = spec(loras, "A", 0.8), spec(loras, "B", 1.3)
    sequence = [  # (model, main, extra, multiplier)
        ("dev", a, None, 1.0),
        ("dev", b, None, 1.0),
        ("dev", a, b, 1.0),  # A goes into the free slot: B stays where it is
        ("dev", None, None, 1.0),
        ("dev", b, a, 1.0),  # the same slots, the roles swapped
        ("dev", spec(loras, "A", -0.6), None, 1.0),
        ("schnell", b, None, 1.0),  # not A: its guidance-embedder layers cannot apply to schnell
        ("dev", None, b, 1.0),
        ("dev", spec(loras, "C", 0.5), a, 1.5),  # fp16 file; go_fast multiplier
        ("dev", spec(loras, "X", 0.5), a, 1.5),  # into C's slot at C's scale: the swap's own scale 1 must go
    ]
    for step, (model, main, extra, multiplier) in enumerate(sequence):
        manager.apply(model, main, extra, multiplier=multiplier)
        assert_only_slots(models, manager)
        expected = plain_render(tiny_weights, model, main, extra, multiplier)
        assert (render(models, model) - expected).abs().max() < 1e-5, f"step {step}"
        if model == "schnell":
            assert {lora.model for lora in manager.resident} == {"schnell"}, "dev's slots were emptied"
    # A, B, A again (B had taken its slot), B on schnell, then on dev (emptied meanwhile) B, C and A again, X
    assert manager.loads == 8


def test_slot_delta_is_scale_times_the_files_delta(models, manager, loras):
    """Checked against the fixtures' hand-written ΔW: rank padding (4 and 12 into 16), alpha, linearity."""
    manager.apply("dev", spec(loras, "A", 0.37), spec(loras, "B", -2.0), multiplier=1.5)
    slot_a, slot_b = slot_of(manager, "dev", "lora-A"), slot_of(manager, "dev", "lora-B")
    assert_slot_holds(slot_deltas(models, "dev", slot_a), loras["A"].expected, 0.37 * 1.5)
    assert_slot_holds(slot_deltas(models, "dev", slot_b), loras["B"].expected, -2.0 * 1.5)

    manager.apply("dev", spec(loras, "A", 1.0), spec(loras, "X", 0.5))  # X replaces B in place: B's layers zeroed
    assert slot_of(manager, "dev", "lora-X") == slot_b
    assert_slot_holds(slot_deltas(models, "dev", slot_a), loras["A"].expected, 1.0)
    assert_slot_holds(slot_deltas(models, "dev", slot_b), loras["X"].expected, 0.5)
    assert manager.loads == 3


def test_same_lora_as_main_and_extra_applies_once_at_main_scale(models, manager, loras):
    manager.apply("dev", spec(loras, "B", 0.6), spec(loras, "B", 1.3))
    assert [lora.label for lora in manager.resident] == ["lora-B"]
    assert_slot_holds(slot_deltas(models, "dev", slot_of(manager, "dev", "lora-B")), loras["B"].expected, 0.6)


def test_not_hotswappable_raises_before_touching_the_model(models, loras, tmp_path):
    manager = HotswapAdapterManager(models)
    manager.prepare(("dev",), max_rank=8)
    manager.apply("dev", spec(loras, "B"), None)
    before = render(models, "dev")
    rank12 = tmp_path / "rank12.safetensors"
    layer = "transformer.transformer_blocks.0.attn.add_q_proj"
    save_file({f"{layer}.lora_A.weight": torch.ones(12, 32), f"{layer}.lora_B.weight": torch.ones(32, 12)}, rank12)
    with_bias = tmp_path / "bias.safetensors"
    save_file(load_file(loras["B"].path) | {"transformer.x_embedder.lora_B.bias": torch.ones(32)}, with_bias)
    extra = {"R12": lora_fixtures.LoraFixture(rank12, "", {}), "BIAS": lora_fixtures.LoraFixture(with_bias, "", {})}
    loras = loras | extra

    with pytest.raises(NotHotswappable, match=re.escape("rank 12 on layer transformer_blocks.0.attn.add_")) as error:
        manager.apply("dev", spec(loras, "B"), spec(loras, "R12"))
    assert str(error.value).startswith("LoRA lora-R12: ")
    with pytest.raises(NotHotswappable, match=r"6 CLIP-L text-encoder layer\(s\) and 1 T5-XXL"):
        manager.apply("dev", spec(loras, "C"), spec(loras, "TE"))  # C would fit, but is not swapped in either
    with pytest.raises(NotHotswappable, match="changes biases"):
        manager.apply("dev", spec(loras, "BIAS"), None)
    with pytest.raises(LoraError, match="looks like a diffusers/PEFT LoRA") as error:
        manager.apply("dev", spec(loras, "BAD"), None)
    assert not isinstance(error.value, NotHotswappable)  # a broken file fails on the plain path too

    assert torch.equal(render(models, "dev"), before)
    assert manager.loads == 1
    assert [lora.label for lora in manager.resident] == ["lora-B"]


def test_block_diagonal_fused_layers_need_only_their_own_rank(models, loras):
    """kohya's split_qkv writes a fused layer as one rank-3r LoRA whose up matrix is block-diagonal;
    each diffusers layer gets only its own r columns, so A (rank 12 on txt_attn.qkv) fits slots of rank 8."""
    manager = HotswapAdapterManager(models)
    manager.prepare(("dev",), max_rank=8)
    manager.apply("dev", spec(loras, "A", 0.5), None)
    assert_slot_holds(slot_deltas(models, "dev", slot_of(manager, "dev", "lora-A")), loras["A"].expected, 0.5)


def test_failed_swap_resets_the_slot_to_zeros(models, manager, loras, tiny_weights, monkeypatch):
    base = render(models, "dev")
    manager.apply("dev", spec(loras, "B"), None)

    def half_then_fail(model, state_dict, adapter_name, config):
        key = next(iter(state_dict))
        model.get_parameter(key).data.fill_(1.0)  # a half-written slot
        raise RuntimeError("injected failure during the copy")

    with monkeypatch.context() as patch:
        patch.setattr(hotswap, "hotswap_adapter_from_state_dict", half_then_fail)
        with pytest.raises(NotHotswappable, match="injected failure"):
            manager.apply("dev", spec(loras, "A"), None)  # into B's slot, since B is not wanted
    assert manager.resident == ()
    for slot in SLOTS:
        assert not any(delta.any() for delta in slot_deltas(models, "dev", slot).values())
    assert torch.equal(render(models, "dev"), base)

    manager.apply("dev", spec(loras, "A", 0.5), None)
    expected = plain_render(tiny_weights, "dev", spec(loras, "A", 0.5), None)
    assert (render(models, "dev") - expected).abs().max() < 1e-5


def test_only_ever_two_slots_whatever_is_swapped(models, manager, loras):
    """No module or parameter is ever added or removed, so nothing a compiled graph holds goes stale."""
    transformer = models.transformer("dev")
    structure = sorted((name, tuple(p.shape)) for name, p in transformer.named_parameters())
    for main, extra in [("A", None), ("B", "C"), ("X", "A"), ("C", None), (None, "B"), (None, None), ("A", "X")]:
        manager.apply("dev", main and spec(loras, main), extra and spec(loras, extra))
        assert_only_slots(models, manager)
        assert sorted((name, tuple(p.shape)) for name, p in transformer.named_parameters()) == structure
    assert models.pipeline("dev", "txt2img").get_list_adapters() == {"transformer": list(SLOTS)}


def test_apply_needs_prepare(models, loras):
    with pytest.raises(RuntimeError, match=re.escape(r"call prepare() before compiling")):
        HotswapAdapterManager(models).apply("dev", spec(loras, "B"), None)
