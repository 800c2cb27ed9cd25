"""The layers of a live FLUX pipeline that a LoRA can change, and FLUX's other names for them.

A LoRA file names its layers in one of several vocabularies (diffusers, BFL's original names, kohya's flattened
ones, XLabs' attention processors, OneTrainer's OMI split of fused layers). `LoraTargets` is what those names
resolve against: every Linear layer of the transformer and the text encoders (CLIP-L, T5-XXL) and CLIP's two
embeddings, by component, live module name and weight shape. It is read from the modules themselves, not from
configs, so FLUX.1 at full size, the tiny test model, dev and schnell (which lacks the guidance embedder), a
model on the meta device, and a transformer whose layers already carry LoRA slots all answer alike.

`bfl_names()` maps FLUX's original layer names to diffusers layers. A fused BFL layer (`img_attn.qkv`,
`single_blocks.N.linear1`) becomes several diffusers layers, and its output rows split over them in the order
listed, each taking as many rows as its own layer has; the final layer's modulation emits (shift, scale) in BFL
and (scale, shift) in diffusers, so its two halves swap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

TRANSFORMER, CLIP, T5 = "transformer", "text_encoder", "text_encoder_2"
COMPONENTS = (TRANSFORMER, CLIP, T5)
TEXT_ENCODERS = (CLIP, T5)
COMPONENT_NAMES = {TRANSFORMER: "FLUX transformer", CLIP: "CLIP-L text encoder", T5: "T5-XXL text encoder"}

# BFL layer -> the diffusers layers inside the same block; a fused layer's rows split over them in this order.
DOUBLE_BLOCK_LAYERS = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn.proj": ("attn.to_out.0",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "img_mod.lin": ("norm1.linear",),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn.proj": ("attn.to_add_out",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
    "txt_mod.lin": ("norm1_context.linear",),
}
SINGLE_BLOCK_LAYERS = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.lin": ("norm.linear",),
}
TOP_LEVEL_LAYERS = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
}
SWAPPED_HALVES = "final_layer.adaLN_modulation.1"
# Other trainers' names for BFL layers (see bfl_names): XLabs' LoRA attention processors, and ComfyUI's name for
# the q/k/v rows of linear1 alone.
XLABS_DOUBLE = {
    "processor.qkv_lora1": "img_attn.qkv",
    "processor.proj_lora1": "img_attn.proj",
    "processor.qkv_lora2": "txt_attn.qkv",
    "processor.proj_lora2": "txt_attn.proj",
}
XLABS_SINGLE = {"processor.proj_lora": "linear2"}
LINEAR1_QKV = ("processor.qkv_lora", "linear1_qkv")  # the first three of linear1's four parts
OMI_IMG_IN = "img_in.proj"  # OneTrainer's OMI name for img_in


@dataclass(frozen=True)
class Layer:
    """One layer a LoRA can change: its weight is rows × cols (out × in for Linear, tokens × width for Embedding)."""

    rows: int
    cols: int
    embedding: bool = False
    bias: bool = False  # whether it has a bias, which a bias delta (diff_b) changes


@dataclass(frozen=True)
class BflTarget:
    """The diffusers layers one BFL-named layer lands on; its output rows split over them in this order."""

    names: tuple[str, ...]
    swap_halves: bool = False


class LoraTargets:
    """Every layer a LoRA can change on one pipeline (see the module docstring)."""

    def __init__(self, components: Mapping[str, Mapping[str, Layer]]):
        self.components = {name: dict(layers) for name, layers in components.items()}

    @classmethod
    def of_pipeline(cls, pipe) -> LoraTargets:
        return cls.of_modules(
            transformer=pipe.transformer,
            text_encoder=getattr(pipe, CLIP, None),
            text_encoder_2=getattr(pipe, T5, None),
        )

    @classmethod
    def of_modules(cls, **modules: torch.nn.Module | None) -> LoraTargets:
        components = {}
        for component, module in modules.items():
            if module is not None:
                module = getattr(module, "_orig_mod", module)  # torch.compile's wrapper
                components[component] = _layers(module, embeddings=component == CLIP)
        return cls(components)

    def layer(self, component: str, name: str) -> Layer | None:
        return self.components.get(component, {}).get(name)

    def names(self, component: str) -> dict[str, Layer]:
        return self.components.get(component, {})

    def linear_layers(self, component: str = TRANSFORMER) -> list[str]:
        return sorted(name for name, layer in self.names(component).items() if not layer.embedding)

    def has_guidance(self) -> bool:
        return self.layer(TRANSFORMER, TOP_LEVEL_LAYERS["guidance_in.in_layer"]) is not None

    @cached_property
    def bfl_names(self) -> dict[str, BflTarget]:
        """BFL layer name, or another trainer's name for it, -> the diffusers layers it lands on."""
        names = {}
        for block in _block_indices(self.names(TRANSFORMER), "transformer_blocks"):
            names |= self._block(f"double_blocks.{block}", f"transformer_blocks.{block}", DOUBLE_BLOCK_LAYERS)
            for alias, bfl in XLABS_DOUBLE.items():
                names[f"double_blocks.{block}.{alias}"] = names[f"double_blocks.{block}.{bfl}"]
        for block in _block_indices(self.names(TRANSFORMER), "single_transformer_blocks"):
            names |= self._block(f"single_blocks.{block}", f"single_transformer_blocks.{block}", SINGLE_BLOCK_LAYERS)
            linear1 = names[f"single_blocks.{block}.linear1"].names
            for alias in LINEAR1_QKV:
                names[f"single_blocks.{block}.{alias}"] = BflTarget(linear1[:3])
            for alias, bfl in XLABS_SINGLE.items():
                names[f"single_blocks.{block}.{alias}"] = names[f"single_blocks.{block}.{bfl}"]
        for bfl, name in TOP_LEVEL_LAYERS.items():
            if name in self.names(TRANSFORMER):
                names[bfl] = BflTarget((name,), swap_halves=bfl == SWAPPED_HALVES)
        if "img_in" in names:
            names[OMI_IMG_IN] = names["img_in"]
        return names

    def _block(self, bfl_block: str, block: str, layers: Mapping[str, tuple[str, ...]]) -> dict[str, BflTarget]:
        """A block's BFL layers, plus OMI's `<fused layer>.<i>` for each part of a fused layer."""
        names = {}
        for bfl, parts in layers.items():
            full = tuple(f"{block}.{part}" for part in parts)
            if not all(name in self.names(TRANSFORMER) for name in full):
                continue
            names[f"{bfl_block}.{bfl}"] = BflTarget(full)
            if len(full) > 1:
                names |= {f"{bfl_block}.{bfl}.{index}": BflTarget((name,)) for index, name in enumerate(full)}
        return names


def _layers(module: torch.nn.Module, embeddings: bool) -> dict[str, Layer]:
    """Linear (and, if asked, Embedding) layers by name; a layer wrapped by peft counts as its base layer, and
    the LoRA layers peft added are not targets themselves."""
    layers, skip = {}, ()
    for name, child in module.named_modules():
        if skip and name.startswith(skip):
            continue
        if isinstance(child, BaseTunerLayer):
            skip = tuple(f"{name}.{part}" for part in _peft_children(child))
            child = child.get_base_layer()
        if isinstance(child, torch.nn.Linear):
            rows, cols = child.out_features, child.in_features
            layers[name] = Layer(rows, cols, bias=child.bias is not None)
        elif embeddings and isinstance(child, torch.nn.Embedding):
            layers[name] = Layer(child.num_embeddings, child.embedding_dim, embedding=True)
    return layers


def _peft_children(layer: BaseTunerLayer) -> list[str]:
    return ["base_layer", *layer.adapter_layer_names]


def _block_indices(names: Mapping[str, Layer], prefix: str) -> list[int]:
    indices = {int(name.split(".")[1]) for name in names if name.startswith(prefix + ".")}
    return sorted(indices)
