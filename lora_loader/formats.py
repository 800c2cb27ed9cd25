"""Read a LoRA file and return the state dict diffusers loads onto FLUX.1, whatever trainer wrote it.

Every state dict this module returns has one layout: `transformer.<diffusers layer>.lora_A.weight` and
`.lora_B.weight`, and for CLIP layers `text_encoder.text_model.<layer>.lora_linear_layer.down/up.weight`
(diffusers' own text-encoder layout). Each layer's alpha is already folded into lora_A, so the change to a
layer's weight is exactly ΔW = lora_B @ lora_A, and the adapter weight given to `set_adapters` is the only
strength knob left: that is what keeps LoRA scales linear.

| format (example key)                                                   | converter                                 |
|------------------------------------------------------------------------|-------------------------------------------|
| diffusers/PEFT, ai-toolkit (`transformer.….lora_A.weight`)             | none (alpha keys, header metadata folded) |
| PEFT without the prefix (`transformer_blocks.0.….lora_A…`)             | ours: add `transformer.`                  |
| PEFT with BFL names (`diffusion_model.double_blocks.0.….lora_A…`)      | ours (diffusers drops these silently)     |
| kohya sd-scripts (`lora_unet_double_blocks_0_img_attn_qkv.lora_down…`) | diffusers', or ours where it is wrong     |
| ComfyUI kohya (`diffusion_model.double_blocks.0.….lora_down…`)         | diffusers', or ours where it is wrong     |
| kohya mixture (`lora_transformer_transformer_blocks_0_…`)              | ours (diffusers': attention + alpha only) |
| XLabs (`double_blocks.0.processor.qkv_lora1.down.weight`)              | diffusers' XLabs converter                |

Where diffusers 0.42's kohya converter is wrong, and we convert instead:
- single-block `linear1` (fused q, k, v, MLP): diffusers hard-codes FLUX.1's split sizes 3072/12288; ours
  reads them from the transformer config, so models of other widths (the tiny test model) work;
- non-block layers (`img_in`, `txt_in`, `time_in`, `vector_in`, `guidance_in`, `final_layer`): diffusers
  emits them without the `transformer.` prefix, so they are silently dropped (and ignores final_layer alpha);
- CLIP attention layers (`lora_te1_…_self_attn_q_proj`): diffusers emits old attention-processor names that
  transformers 5 drops silently; we emit diffusers' current text-encoder names, which it loads.
A kohya file whose transformer part contains none of these goes through diffusers' converter unchanged.

Files we refuse, with a message that says why: LyCORIS LoKr/LoHa, DoRA (its strength does not scale
linearly, and diffusers drops kohya's `dora_scale` silently), FLUX Control LoRAs (they need a control image),
full model checkpoints, LoRAs for other models (SD 1.x/SDXL, or keys that name no FLUX.1 layer).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from diffusers.loaders import FluxLoraLoaderMixin
from peft.utils.other import get_pattern_key
from safetensors import SafetensorError, safe_open

from .errors import LoraError

logger = logging.getLogger(__name__)

# Format names, as users read them in logs and errors.
DIFFUSERS = "diffusers/PEFT"
PEFT_WITHOUT_PREFIX = "PEFT without the transformer. prefix"
BFL_PEFT = "PEFT with BFL layer names"
KOHYA = "kohya sd-scripts"
COMFYUI = "ComfyUI (kohya tensors, diffusion_model. names)"
MIXTURE = "kohya mixture (lora_transformer_ names)"
XLABS = "XLabs"

MLP_RATIO = 4  # FluxSingleTransformerBlock's default, which FluxTransformer2DModel never overrides
FLUX1_WIDTHS = (3072, 12288)  # inner and MLP width that diffusers' kohya converter assumes for linear1

# BFL layer -> diffusers layers inside the same block; a fused layer is split by rows in this order.
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
    "final_layer.adaLN_modulation.1": "norm_out.linear",  # BFL outputs (shift, scale), diffusers (scale, shift)
}

# Prefixes that put BFL layer names in a file: kohya, ComfyUI, raw PEFT.
BFL_PREFIXES = ("lora_unet_", "model.diffusion_model.", "diffusion_model.", "base_model.model.")
# Key fragments of UNet LoRAs (SD 1.x/2.x, SDXL), in diffusers and in original naming.
UNET_MARKERS = ("down_blocks", "up_blocks", "mid_block", "input_blocks", "output_blocks", "middle_block")
# kohya writes BFL names with underscores for dots: lora_unet_double_blocks_0_img_attn_qkv.
FLAT_BLOCK_LAYER = re.compile(r"^(double_blocks|single_blocks)_(\d+)_(\w+)$")
FLAT_BLOCK_LAYERS = {
    "double_blocks": {layer.replace(".", "_"): layer for layer in DOUBLE_BLOCK_LAYERS},
    "single_blocks": {layer.replace(".", "_"): layer for layer in SINGLE_BLOCK_LAYERS},
}
FLAT_TOP_LEVEL_LAYERS = {layer.replace(".", "_"): layer for layer in TOP_LEVEL_LAYERS}
CLIP_LAYER = re.compile(r"^lora_te1?_text_model_encoder_layers_(\d+)_(self_attn_(?:q|k|v|out)_proj|mlp_fc[12])$")


class ConvertedLora(NamedTuple):
    """A LoRA in diffusers' layout, ready for `load_lora_weights`, and the format it was read as."""

    state_dict: dict[str, torch.Tensor]
    format: str


@dataclass(frozen=True)
class FluxLayout:
    """The Linear layers a LoRA can attach to, and the split sizes of BFL's fused layers, from the config."""

    inner_dim: int
    mlp_dim: int
    num_layers: int
    num_single_layers: int
    guidance_embeds: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FluxLayout:
        inner_dim = config["num_attention_heads"] * config["attention_head_dim"]
        return cls(
            inner_dim=inner_dim,
            mlp_dim=inner_dim * MLP_RATIO,
            num_layers=config["num_layers"],
            num_single_layers=config["num_single_layers"],
            guidance_embeds=bool(config["guidance_embeds"]),
        )

    def linear_layers(self) -> frozenset[str]:
        """Every Linear layer of FluxTransformer2DModel, by diffusers name."""
        return frozenset(name for target in self.bfl_layers().values() for name in target.names)

    def bfl_layers(self) -> dict[str, BflTarget]:
        """BFL layer name -> the diffusers layer(s) it becomes."""
        inner, mlp = self.inner_dim, self.mlp_dim
        row_splits = {"img_attn.qkv": (inner,) * 3, "txt_attn.qkv": (inner,) * 3, "linear1": (inner,) * 3 + (mlp,)}
        layers = {}
        for block in range(self.num_layers):
            for bfl, names in DOUBLE_BLOCK_LAYERS.items():
                full = tuple(f"transformer_blocks.{block}.{name}" for name in names)
                layers[f"double_blocks.{block}.{bfl}"] = BflTarget(full, row_splits.get(bfl))
        for block in range(self.num_single_layers):
            for bfl, names in SINGLE_BLOCK_LAYERS.items():
                full = tuple(f"single_transformer_blocks.{block}.{name}" for name in names)
                layers[f"single_blocks.{block}.{bfl}"] = BflTarget(full, row_splits.get(bfl))
        for bfl, name in TOP_LEVEL_LAYERS.items():
            if bfl.startswith("guidance_in") and not self.guidance_embeds:
                continue  # schnell has no guidance embedder
            layers[bfl] = BflTarget((name,), swap_halves=bfl.startswith("final_layer.adaLN"))
        return layers


@dataclass(frozen=True)
class BflTarget:
    names: tuple[str, ...]
    row_splits: tuple[int, ...] | None = None  # how a fused layer's output rows split over `names`
    swap_halves: bool = False  # the two halves of the output rows come in the other order in diffusers


@dataclass(frozen=True)
class LoraPair:
    """One layer's LoRA: ΔW = (alpha / rank) * up @ down."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lora_A, lora_B) with alpha / rank folded into lora_A (in float32, so fp16 files lose nothing)."""
        rank = self.down.shape[0]
        if self.alpha is None or self.alpha == rank:
            return self.down, self.up
        return self.down.float() * (self.alpha / rank), self.up


def load_lora_state_dict(path: str | Path, transformer_config: Mapping[str, Any]) -> ConvertedLora:
    """Read a .safetensors LoRA (never a pickle) and convert it for the transformer with this config."""
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except SafetensorError as error:
        raise LoraError(f"This LoRA is not a readable .safetensors file: {error}") from error
    return convert_lora_state_dict(tensors, transformer_config, metadata)


def convert_lora_state_dict(
    tensors: dict[str, torch.Tensor], transformer_config: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> ConvertedLora:
    """Detect the format of `tensors` and convert them to diffusers' layout (see the module docstring)."""
    layout = FluxLayout.from_config(transformer_config)
    fmt = detect_format(tensors.keys())
    state_dict = CONVERTERS[fmt](tensors, layout, _adapter_metadata(metadata or {}))
    return ConvertedLora(_keep_flux_layers(state_dict, layout, fmt, tensors.keys()), fmt)


# Detection


def detect_format(keys: Iterable[str]) -> str:
    """The format name of a file with these keys; LoraError for files we cannot or will not apply."""
    keys = sorted(keys)
    _reject_unsupported(keys)
    if any(key.endswith(".lora_down.weight") for key in keys):
        return _detect_kohya(keys)
    if any(".processor." in key and "_lora" in key for key in keys):
        return XLABS
    if any(key.endswith(".lora_A.weight") for key in keys):
        return _detect_peft(keys)
    raise LoraError(f"This file is not a LoRA format this server knows (keys like {_sample(keys)}).")


def _reject_unsupported(keys: list[str]) -> None:
    if not keys:
        raise LoraError("This LoRA file contains no tensors.")
    if any(".lokr_" in key or key.startswith("lokr_") for key in keys):
        raise LoraError(_lycoris_message("LoKr", keys))
    if any(".hada_" in key or key.startswith("hada_") for key in keys):
        raise LoraError(_lycoris_message("LoHa", keys))
    if any("dora_scale" in key or "lora_magnitude_vector" in key for key in keys):
        raise LoraError(
            f"This file is a DoRA (keys like {_sample(k for k in keys if 'dora' in k or 'magnitude' in k)}), "
            "which is not supported: its strength does not scale linearly with lora_scale. Use a plain LoRA."
        )
    if any("query_norm.scale" in key for key in keys):
        raise LoraError("This is a FLUX Control LoRA (Canny/Depth); it needs a control image, which this model lacks.")
    if not any("lora" in key.lower() for key in keys):
        raise LoraError(
            f"This file has no LoRA tensors: its {len(keys)} tensors (keys like {_sample(keys)}) look like a full "
            "model checkpoint. Pass a LoRA .safetensors file instead."
        )


def _lycoris_message(kind: str, keys: list[str]) -> str:
    sample = _sample(k for k in keys if kind.lower() in k)
    return (
        f"This file is a LyCORIS {kind} (keys like {sample}), which is not supported. "
        "Use a plain LoRA (lora_down/lora_up or lora_A/lora_B tensors)."
    )


def _detect_kohya(keys: list[str]) -> str:
    modules = [key for key in keys if not key.startswith(("lora_te", "text_encoders."))]
    if not modules:
        raise LoraError(
            f"This kohya LoRA only changes the text encoder (keys like {_sample(keys)}); "
            "it attaches to no FLUX transformer layer."
        )
    if any(key.startswith("lora_transformer_") for key in modules):
        return MIXTURE
    _reject_unet(modules, "kohya")
    if any(key.startswith("lora_unet_") for key in modules):
        return KOHYA
    if any(key.startswith(("diffusion_model.", "model.diffusion_model.")) for key in modules):
        return COMFYUI
    raise LoraError(f"This kohya-style LoRA names no FLUX layer this server knows (keys like {_sample(modules)}).")


def _detect_peft(keys: list[str]) -> str:
    names = [key.removeprefix("base_model.model.") for key in keys]
    _reject_unet(names, "diffusers")
    if any(name.startswith("transformer.") for name in keys):
        return DIFFUSERS
    if any(_strip_bfl_prefix(name).startswith(("double_blocks.", "single_blocks.")) for name in names):
        return BFL_PEFT
    return PEFT_WITHOUT_PREFIX


def _reject_unet(keys: list[str], style: str) -> None:
    unet_keys = [key for key in keys if key.startswith("unet.") or any(m in key for m in UNET_MARKERS)]
    if unet_keys:
        raise LoraError(
            f"This file looks like an SD 1.x/SDXL {style} LoRA (keys like {_sample(unet_keys)}); "
            "it attaches to no FLUX layer. Use a LoRA trained for FLUX.1."
        )


# Converters: (tensors, layout, adapter metadata) -> diffusers state dict


def _convert_diffusers(tensors, layout, metadata) -> dict[str, torch.Tensor]:
    pairs = _pairs(tensors, ".lora_A.weight", ".lora_B.weight")
    return _peft_state_dict({module: _with_metadata_alpha(module, pair, metadata) for module, pair in pairs.items()})


def _convert_peft_without_prefix(tensors, layout, metadata) -> dict[str, torch.Tensor]:
    pairs = _pairs(tensors, ".lora_A.weight", ".lora_B.weight")
    return _peft_state_dict(
        {"transformer." + module.removeprefix("base_model.model."): p for module, p in pairs.items()}
    )


def _convert_bfl_peft(tensors, layout, metadata) -> dict[str, torch.Tensor]:
    return _bfl_state_dict(_pairs(tensors, ".lora_A.weight", ".lora_B.weight"), layout)


def _convert_kohya(tensors, layout, metadata) -> dict[str, torch.Tensor]:
    """Text-encoder parts are always ours; the transformer part is diffusers' unless it gets it wrong."""
    text_encoder = {k: v for k, v in tensors.items() if k.startswith(("lora_te", "text_encoders."))}
    transformer = {k: v for k, v in tensors.items() if k not in text_encoder}
    converted = _clip_state_dict(_pairs(text_encoder, ".lora_down.weight", ".lora_up.weight"))
    pairs = _pairs(transformer, ".lora_down.weight", ".lora_up.weight")
    if not _diffusers_converts_kohya(pairs, layout):
        return converted | _bfl_state_dict(pairs, layout)
    # Upcast first: diffusers folds alpha in the tensors' own dtype, which costs fp16 files precision.
    return converted | _diffusers_state_dict({k: v.float() for k, v in transformer.items()})


def _convert_mixture(tensors, layout, metadata) -> dict[str, torch.Tensor]:
    """`lora_transformer_<diffusers name, dots as underscores>`, resolved against FLUX's layer names."""
    pairs = _pairs(tensors, ".lora_down.weight", ".lora_up.weight")
    by_flat_name = {name.replace(".", "_"): name for name in layout.linear_layers()}
    transformer, clip = {}, {}
    for module, pair in pairs.items():
        if module.startswith("lora_te"):
            clip[module] = pair
        else:  # a name that is no FLUX layer stays as it is; _keep_flux_layers reports it
            flat = module.removeprefix("lora_transformer_")
            transformer["transformer." + by_flat_name.get(flat, flat)] = pair
    return _peft_state_dict(transformer) | _clip_state_dict(clip)


def _convert_xlabs(tensors, layout, metadata) -> dict[str, torch.Tensor]:
    return _diffusers_state_dict(tensors)


CONVERTERS = {
    DIFFUSERS: _convert_diffusers,
    PEFT_WITHOUT_PREFIX: _convert_peft_without_prefix,
    BFL_PEFT: _convert_bfl_peft,
    KOHYA: _convert_kohya,
    COMFYUI: _convert_kohya,
    MIXTURE: _convert_mixture,
    XLABS: _convert_xlabs,
}


def _diffusers_converts_kohya(modules: Iterable[str], layout: FluxLayout) -> bool:
    """Whether diffusers' kohya converter gets every one of these layers right (see the module docstring)."""
    names = [_bfl_name(module) for module in modules]
    in_blocks = all(name.startswith(("double_blocks.", "single_blocks.")) for name in names)
    has_linear1 = any(name.endswith(".linear1") for name in names)
    return in_blocks and (not has_linear1 or (layout.inner_dim, layout.mlp_dim) == FLUX1_WIDTHS)


def _diffusers_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    try:
        converted = FluxLoraLoaderMixin.lora_state_dict(dict(tensors))
    except (ValueError, KeyError, AssertionError, NotImplementedError) as error:
        raise LoraError(f"diffusers could not convert this LoRA (keys like {_sample(tensors)}): {error}") from error
    return converted


def _bfl_state_dict(pairs: dict[str, LoraPair], layout: FluxLayout) -> dict[str, torch.Tensor]:
    """Our size-aware converter for BFL layer names (kohya, ComfyUI or PEFT tensors)."""
    targets = layout.bfl_layers()
    state_dict = {}
    for module, pair in pairs.items():
        name = _bfl_name(module)
        target = targets.get(name)
        if target is None:
            state_dict |= _peft_state_dict({"transformer." + name: pair})  # reported by _keep_flux_layers
            continue
        state_dict |= _split_fused(name, pair, target)
    return state_dict


def _split_fused(name: str, pair: LoraPair, target: BflTarget) -> dict[str, torch.Tensor]:
    """A fused layer's LoRA as one LoRA per diffusers layer: lora_A shared, lora_B split by output rows."""
    down, up = pair.folded()
    if target.swap_halves:
        up = torch.cat(up.chunk(2)[::-1])
    splits = target.row_splits or (up.shape[0],)
    if sum(splits) != up.shape[0]:
        raise LoraError(
            f"LoRA layer {name} has {up.shape[0]} output rows, but this FLUX model's {name} has {sum(splits)}: "
            "the LoRA was made for a model of another size."
        )
    state_dict = {}
    for diffusers_name, rows in zip(target.names, up.split(splits), strict=True):
        state_dict[f"transformer.{diffusers_name}.lora_A.weight"] = down
        state_dict[f"transformer.{diffusers_name}.lora_B.weight"] = rows.contiguous()
    return state_dict


def _clip_state_dict(pairs: dict[str, LoraPair]) -> dict[str, torch.Tensor]:
    """kohya/ComfyUI CLIP layers (`lora_te1_text_model_encoder_layers_0_self_attn_q_proj`) -> text_encoder keys."""
    clip, skipped = {}, []
    for module, pair in pairs.items():
        flat = module.replace("text_encoders.clip_l.transformer.", "lora_te1_").replace(".", "_")
        match = CLIP_LAYER.match(flat)
        if match is None:
            skipped.append(module)
            continue
        layer, sublayer = match.groups()
        sublayer = sublayer.replace("self_attn_", "self_attn.").replace("mlp_", "mlp.")
        clip[f"text_encoder.text_model.encoder.layers.{layer}.{sublayer}"] = pair
    if skipped:
        # T5 (lora_te2_) parts: diffusers' FLUX pipeline cannot attach LoRAs to T5 either.
        logger.warning("Ignoring %d text-encoder LoRA layer(s) that are not CLIP layers: %s", len(skipped), skipped[:3])
    return _peft_state_dict(clip)


def _peft_state_dict(pairs: dict[str, LoraPair]) -> dict[str, torch.Tensor]:
    """Transformer layers as PEFT keys; CLIP layers in diffusers' text-encoder layout (`lora_linear_layer`),
    because diffusers' CLIP loader only recognises PEFT keys when an attention layer is among them."""
    state_dict = {}
    for module, pair in pairs.items():
        down, up = pair.folded()
        if module.startswith("text_encoder."):
            state_dict[f"{module}.lora_linear_layer.down.weight"] = down
            state_dict[f"{module}.lora_linear_layer.up.weight"] = up
        else:
            state_dict[f"{module}.lora_A.weight"] = down
            state_dict[f"{module}.lora_B.weight"] = up
    return state_dict


# Keys and alphas


def _pairs(tensors: Mapping[str, torch.Tensor], down: str, up: str) -> dict[str, LoraPair]:
    """Group `<module><down>`, `<module><up>` and `<module>.alpha` by module; other keys are logged and ignored."""
    pairs, used = {}, set()
    for key in tensors:
        if not key.endswith(down):
            continue
        module = key.removesuffix(down)
        if module + up not in tensors:
            raise LoraError(f"This LoRA file is incomplete: it has {key} but no {module + up}.")
        alpha = tensors.get(module + ".alpha")
        pairs[module] = LoraPair(tensors[key], tensors[module + up], None if alpha is None else float(alpha))
        used |= {key, module + up, module + ".alpha"}
    ignored = [key for key in tensors if key not in used]
    if ignored:
        logger.warning("Ignoring %d tensor(s) that are not LoRA weights: %s", len(ignored), _sample(ignored))
    return pairs


def _module_of(key: str, suffixes: tuple[str, ...]) -> str:
    for suffix in suffixes:
        if key.endswith(suffix):
            return key.removesuffix(suffix)
    return key


def _strip_bfl_prefix(module: str) -> str:
    for prefix in BFL_PREFIXES:
        if module.startswith(prefix):
            return module.removeprefix(prefix)
    return module


def _bfl_name(module: str) -> str:
    """`lora_unet_double_blocks_0_img_attn_qkv` or `diffusion_model.double_blocks.0.img_attn.qkv` -> dotted BFL name."""
    name = _strip_bfl_prefix(module)
    if "." in name:
        return name
    match = FLAT_BLOCK_LAYER.match(name)
    if match is None:
        return FLAT_TOP_LEVEL_LAYERS.get(name, name)
    kind, block, layer = match.groups()
    return f"{kind}.{block}.{FLAT_BLOCK_LAYERS[kind].get(layer, layer)}"


def _adapter_metadata(metadata: Mapping[str, str]) -> dict[str, Any]:
    """The LoraConfig that diffusers (>= 0.34) stores in the file header, if any: it can carry lora_alpha."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise LoraError(
            "This file's header has a lora_adapter_metadata entry that is not a JSON object, so its alphas "
            "cannot be read. Re-save the LoRA (diffusers' save_lora_weights writes it correctly)."
        )
    if any(key.endswith(".use_dora") and value for key, value in config.items()):
        raise LoraError("This file is a DoRA (its header says use_dora), which is not supported. Use a plain LoRA.")
    return config


def _with_metadata_alpha(module: str, pair: LoraPair, metadata: dict[str, Any]) -> LoraPair:
    """Give `pair` the alpha that diffusers' header metadata assigns to `module` (an `.alpha` key wins)."""
    component, _, name = module.partition(".")
    if pair.alpha is not None or f"{component}.lora_alpha" not in metadata:
        return pair
    alpha = metadata[f"{component}.lora_alpha"]
    patterns = metadata.get(f"{component}.alpha_pattern") or {}
    pattern = get_pattern_key(list(patterns), name)
    alpha = patterns.get(pattern, alpha)
    rank = pair.down.shape[0]
    if metadata.get(f"{component}.use_rslora"):
        alpha = alpha * rank**0.5  # rsLoRA scales by alpha / sqrt(rank); fold as an equivalent plain alpha
    return LoraPair(pair.down, pair.up, float(alpha))


def _keep_flux_layers(
    state_dict: dict[str, torch.Tensor], layout: FluxLayout, fmt: str, original_keys: Iterable[str]
) -> dict[str, torch.Tensor]:
    """Drop (and log) layers this FLUX model does not have; LoraError when no transformer layer is left.

    CLIP layers are checked against the live text encoder when the adapter is attached.
    """
    layers = layout.linear_layers()
    kept, dropped = {}, set()
    for key, tensor in state_dict.items():
        module = _module_of(key, (".lora_A.weight", ".lora_B.weight"))
        if key.startswith("text_encoder.") or module.removeprefix("transformer.") in layers:
            kept[key] = tensor
        else:
            dropped.add(module)
    if not any(key.startswith("transformer.") for key in kept):
        raise LoraError(
            f"This file looks like a {fmt} LoRA (keys like {_sample(original_keys)}), but it attaches to no "
            "layer of this FLUX.1 model. Use a LoRA trained for FLUX.1."
        )
    if dropped:
        logger.warning("Ignoring %d LoRA layer(s) this FLUX.1 model does not have: %s", len(dropped), _sample(dropped))
    return kept


def _sample(keys: Iterable[str], count: int = 3) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:count])
    return shown + (", …" if len(keys) > count else "")
