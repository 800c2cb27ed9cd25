"""Real trainers' LoRA files at FLUX.1's real size: converted whole, and attached as exactly what they mean.

The files are generated here, laid out as each public trainer writes them (testkit/trainer_loras.py), for
FLUX.1 [dev]'s real transformer, CLIP-L and T5-XXL built in no memory (testkit/flux1_models.py):

- At full size (19 double + 38 single blocks, width 3072): every tensor of every file converts (the converter
  refuses a file with any tensor it cannot apply, so a pass means every key was consumed), every converted layer
  is a real layer of the live models with matching shapes, each component gets as many layers as the trainer
  trains, and each layer's ΔW and bias change equal what the file means.
- At full width with 2 double + 2 single blocks, 2 CLIP layers and 2 T5 blocks: the same files attached on the
  plain path (peft adapters on the transformer and both text encoders) and on the compiled path (two fixed slots),
  where each live layer's ΔW = scale · lora_B @ lora_A must equal the file's meaning times the LoRA scale within
  1e-3. A file the compiled path cannot take whole (text-encoder layers, bias changes) is refused there with the
  reason, before anything changes.

ΔW is compared exactly without building it: for ΔW = U V (U rows × r, V r × cols), ‖U₁V₁ − U₂V₂‖_F² is the trace of
(UᵀU)(VVᵀ) with U = [U₁, −U₂], V = [V₁; V₂], a few r × r products per layer in float64.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.loaders import FluxLoraLoaderMixin
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

from lora_loader.adapters import AdapterManager, LoraSpec, adapter_name
from lora_loader.formats import ConvertedLora, convert_lora_state_dict, load_lora_state_dict
from lora_loader.hotswap import HotswapAdapterManager, NotHotswappable
from lora_loader.targets import COMPONENTS, LoraTargets
from testkit import flux1_models, trainer_loras
from testkit.trainer_loras import CLIP, T5, TRANSFORMER, Meaning

pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")

TOLERANCE = 1e-3
D, S = 19, 38  # FLUX.1's double and single blocks
DOUBLE_LINEAR, SINGLE_LINEAR, TOP_LINEAR = 14, 6, 10  # diffusers Linear layers per double/single block, outside
EVERY_LINEAR = D * DOUBLE_LINEAR + S * SINGLE_LINEAR + TOP_LINEAR  # 504
CLIP_LINEAR, T5_LINEAR = 12 * 6, 24 * 7  # q/k/v/out + fc1/fc2 per CLIP layer; q/k/v/o + wi_0/wi_1/wo per T5 block
TEXT = {CLIP: CLIP_LINEAR, T5: T5_LINEAR}
# What each trainer trains at FLUX.1's size, by diffusers layer (a fused BFL layer counts as its parts).
TRAINED = {
    "ai_toolkit": {TRANSFORMER: D * DOUBLE_LINEAR + S * SINGLE_LINEAR},  # every Linear in both block kinds
    "kohya": {TRANSFORMER: D * DOUBLE_LINEAR + S * SINGLE_LINEAR + 8, **TEXT},  # blocks + in_dims' 8 layers
    "kohya_split_qkv": {TRANSFORMER: D * DOUBLE_LINEAR + S * SINGLE_LINEAR},
    "comfyui": {TRANSFORMER: EVERY_LINEAR},
    "onetrainer_comfy": {TRANSFORMER: EVERY_LINEAR, **TEXT},
    "onetrainer_kohya": {TRANSFORMER: EVERY_LINEAR, **TEXT},
    "onetrainer_legacy": {TRANSFORMER: EVERY_LINEAR, **TEXT},
    "onetrainer_diffusers": {TRANSFORMER: EVERY_LINEAR, **TEXT},
    "onetrainer_omi": {TRANSFORMER: EVERY_LINEAR, **TEXT},
    "xlabs": {TRANSFORMER: D * (3 + 1 + 3 + 1) + S * (3 + 1)},  # q/k/v + out per stream; q/k/v + proj_out
    "simpletuner_lycoris": {TRANSFORMER: D * (8 + 4) + S * 3},  # attention + feed-forward; single: q/k/v
    "peft_raw": {TRANSFORMER: EVERY_LINEAR},
    "comfy_text_encoder_names": {TRANSFORMER: 3 + 1 + 1, CLIP: CLIP_LINEAR + 2, T5: T5_LINEAR},  # + 2 embeddings
}
TRAINERS = sorted(trainer_loras.TRAINERS)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Thousands of small per-layer tensor ops: one thread is as fast, and on a shared machine several threads
    spin-wait for each other (the suite ran 10x slower under load with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def flux1():
    """FLUX.1 [dev] at its real size, in no memory."""
    model = flux1_models.flux1_dev()
    return model, LoraTargets.of_pipeline(model.pipe), trainer_loras.Shapes.of(model.pipe)


def reduced_model():
    """FLUX.1's full widths with 2 double + 2 single blocks, 2 CLIP-L layers and 2 T5-XXL blocks, in no memory."""
    model = flux1_models.flux1_dev(reduced=True)
    return model, trainer_loras.Shapes.of(model.pipe)


@pytest.fixture(scope="module")
def plain():
    model, shapes = reduced_model()
    return model, shapes, AdapterManager(model)


@pytest.fixture(scope="module")
def compiled():
    model, shapes = reduced_model()
    manager = HotswapAdapterManager(model)
    manager.prepare(("dev",), max_rank=8)
    return model, shapes, manager


def test_trainer_list_covers_every_trainer():
    assert sorted(TRAINED) == TRAINERS


@pytest.mark.parametrize("trainer", TRAINERS)
def test_trainer_file_converts_whole_at_flux1_size(flux1, tmp_path, trainer):
    model, targets, shapes = flux1
    lora = trainer_loras.write(trainer, tmp_path, shapes, rank=1)
    converted = load_lora_state_dict(lora.path, targets)  # raises if any tensor cannot be applied
    assert converted.format == lora.format
    counts = {component: len(converted.layers(component)) for component in COMPONENTS if converted.layers(component)}
    assert counts == lora.layers == TRAINED[trainer]
    assert_real_layers(model.pipe, converted)
    assert_means(converted_factors(converted), lora.expected, scale=1.0)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_plain_path_changes_each_layer_as_the_file_means(plain, tmp_path, trainer):
    model, shapes, manager = plain
    lora = trainer_loras.write(trainer, tmp_path, shapes, rank=4, seed=1)
    try:
        manager.apply("dev", LoraSpec(key=trainer, path=lora.path, scale=0.75, source=trainer), None)
        assert_means(attached_factors(model.pipe, adapter_name(trainer)), lora.expected, scale=0.75)
    finally:
        manager.apply("dev", None, None)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_compiled_path_takes_a_file_whole_or_says_why(compiled, tmp_path, trainer):
    model, shapes, manager = compiled
    lora = trainer_loras.write(trainer, tmp_path, shapes, rank=4, seed=2)
    spec = LoraSpec(key=trainer, path=lora.path, scale=-1.25, source=trainer)
    text = any(layer.startswith((CLIP + ".", T5 + ".")) for layer in lora.expected)
    bias = any(meaning.bias is not None for meaning in lora.expected.values())
    if text or bias:
        reason = "text-encoder layer" if text else "changes biases"
        with pytest.raises(NotHotswappable, match=reason):
            manager.apply("dev", spec, None)
        assert manager.resident == () or all(lora.label != trainer for lora in manager.resident)
        return
    manager.apply("dev", spec, None)
    (slot,) = [resident.adapter for resident in manager.resident if resident.label == trainer]
    actual = attached_factors(model.pipe, slot)
    changed = {layer: factors for layer, factors in actual.items() if factors[0].any() and factors[1].any()}
    assert_means(changed, lora.expected, scale=-1.25)


def test_our_conversion_matches_diffusers_where_diffusers_is_right(plain, tmp_path):
    """diffusers' kohya (sd-scripts split_qkv, blocks only) and XLabs converters are right at FLUX.1's width:
    ours gives every layer the same ΔW."""
    model, shapes, _ = plain
    targets = LoraTargets.of_pipeline(model.pipe)
    for trainer in ("kohya_split_qkv", "xlabs"):
        tensors = load_file(trainer_loras.write(trainer, tmp_path, shapes, rank=4, seed=3).path)
        ours = converted_factors(convert_lora_state_dict(tensors, targets))
        theirs = diffusers_factors(FluxLoraLoaderMixin.lora_state_dict({k: v.float() for k, v in tensors.items()}))
        assert sorted(ours) == sorted(theirs), trainer
        for layer, (u, v, _) in theirs.items():
            expected = Meaning(terms=[(u, v, 1.0)])
            assert_same(ours[layer][:2], expected.factors(), f"{trainer} {layer}")


# Checks


def assert_real_layers(pipe, converted: ConvertedLora) -> None:
    """Every converted layer is a live Linear/Embedding whose weight the LoRA's shapes fit."""
    for component in COMPONENTS:
        part = converted.part(component)
        for name in converted.layers(component):
            module = getattr(pipe, component).get_submodule(name)
            if isinstance(module, torch.nn.Embedding):
                rank = part[f"{name}.lora_embedding_A"].shape[0]
                assert part[f"{name}.lora_embedding_A"].shape == (rank, module.num_embeddings), name
                assert part[f"{name}.lora_embedding_B"].shape == (module.embedding_dim, rank), name
                continue
            assert isinstance(module, torch.nn.Linear), name
            rank = part[f"{name}.lora_A.weight"].shape[0]
            assert part[f"{name}.lora_A.weight"].shape == (rank, module.in_features), name
            assert part[f"{name}.lora_B.weight"].shape == (module.out_features, rank), name
            if f"{name}.lora_B.bias" in part:
                assert part[f"{name}.lora_B.bias"].shape == (module.out_features,), name


Factors = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # (U, V, bias change): ΔW = U @ V


def converted_factors(converted: ConvertedLora) -> dict[str, Factors]:
    factors = {}
    for component in COMPONENTS:
        part = converted.part(component)
        for name in converted.layers(component):
            if f"{name}.lora_embedding_A" in part:  # PEFT: ΔW = (B @ A)ᵀ
                u, v = part[f"{name}.lora_embedding_A"].T, part[f"{name}.lora_embedding_B"].T
            else:
                u, v = part[f"{name}.lora_B.weight"], part[f"{name}.lora_A.weight"]
            factors[f"{component}.{name}"] = (u, v, part.get(f"{name}.lora_B.bias"))
    return factors


def attached_factors(pipe, adapter: str) -> dict[str, Factors]:
    """Each live layer's ΔW and bias change for `adapter`, peft's scaling (the LoRA scale) included."""
    factors = {}
    for component in COMPONENTS:
        for name, module in getattr(pipe, component).named_modules():
            if not isinstance(module, LoraLayer) or adapter not in module.scaling:
                continue
            scaling = float(module.scaling[adapter])
            if adapter in module.lora_embedding_A:
                u, v = module.lora_embedding_A[adapter].T, module.lora_embedding_B[adapter].T
                factors[f"{component}.{name}"] = (u.detach(), scaling * v.detach(), None)
                continue
            up, down = module.lora_B[adapter], module.lora_A[adapter].weight.detach()
            bias = None if up.bias is None else scaling * up.bias.detach()
            factors[f"{component}.{name}"] = (up.weight.detach(), scaling * down, bias)
    return factors


def diffusers_factors(state_dict: dict[str, torch.Tensor]) -> dict[str, Factors]:
    return {
        key.removesuffix(".lora_A.weight"): (state_dict[key.replace(".lora_A.", ".lora_B.")], value, None)
        for key, value in state_dict.items()
        if key.endswith(".lora_A.weight")
    }


def assert_means(actual: dict[str, Factors], expected: dict[str, Meaning], scale: float) -> None:
    """The same layers, and on each ΔW and bias change = scale × what the file means, within TOLERANCE."""
    assert sorted(actual) == sorted(expected)
    for layer, meaning in expected.items():
        u, v = meaning.factors()
        assert_same(actual[layer][:2], (u, scale * v), layer)
        bias = actual[layer][2]
        if meaning.bias is None:
            assert bias is None or not bias.any(), layer
        else:
            assert torch.allclose(bias.double(), scale * meaning.bias.double(), rtol=TOLERANCE, atol=TOLERANCE), layer


def assert_same(actual: tuple[torch.Tensor, torch.Tensor], expected: tuple[torch.Tensor, torch.Tensor], what: str):
    """‖ΔW_actual − ΔW_expected‖_F ≤ TOLERANCE, absolute and relative to ‖ΔW_expected‖_F (every element is then
    within TOLERANCE too)."""
    (u1, v1), (u2, v2) = actual, expected
    error = _frobenius(torch.cat([u1.double(), -u2.double()], dim=1), torch.cat([v1.double(), v2.double()]))
    norm = _frobenius(u2.double(), v2.double())
    assert error <= TOLERANCE and error <= TOLERANCE * norm, f"{what}: ‖ΔW error‖ {error:.2e}, ‖ΔW‖ {norm:.2e}"


def _frobenius(u: torch.Tensor, v: torch.Tensor) -> float:
    """‖U @ V‖_F without forming U @ V."""
    return float(torch.trace((u.T @ u) @ (v @ v.T)).clamp(min=0).sqrt())
