"""LoRA adapters on FLUX's text encoders (CLIP-L and T5-XXL): attach, scale, remove, with peft directly.

diffusers' FLUX loader attaches text-encoder LoRAs to CLIP only, and only to the Linear layers whose names it
knows (it reads their ranks from CLIP's attention and MLP names): T5 layers (kohya's `train_t5xxl`, OneTrainer)
and CLIP's embeddings would fail or be skipped. peft itself handles any Linear or Embedding layer, so each text
encoder gets its adapters here: one peft LoraConfig per file and encoder, whose per-layer ranks come from the
tensors and whose alphas equal the ranks (the converted tensors carry their alpha already, see
`lora_loader.formats`), so the adapter weight is the layer's scale.

The adapters are ordinary peft adapters on the transformers model (`peft_config`, `_hf_peft_config_loaded` set as
transformers' own `load_adapter` sets them), so diffusers' pipeline helpers see CLIP's too.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

import torch
from diffusers.utils.peft_utils import delete_adapter_layers, recurse_remove_peft_layers
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer

from .errors import LoraError

LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_B.bias", ".lora_embedding_A", ".lora_embedding_B")


def attach(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], adapter: str) -> int:
    """Attach `state_dict` (keys relative to `model`, see formats.ConvertedLora) as adapter `adapter`; returns the
    number of layers carrying it. On failure the model keeps no part of it."""
    ranks = _ranks(state_dict)
    config = _config(ranks, lora_bias=any(key.endswith(".lora_B.bias") for key in state_dict))
    parameter = next(model.parameters())
    tensors = {key: value.to(device=parameter.device, dtype=parameter.dtype) for key, value in state_dict.items()}
    try:
        # low_cpu_mem_usage: the LoRA layers are created empty and take the file's tensors, no random init first.
        inject_adapter_in_model(config, model, adapter, low_cpu_mem_usage=True)
        result = set_peft_model_state_dict(model, tensors, adapter, low_cpu_mem_usage=True)
        model._hf_peft_config_loaded = True  # what transformers' load_adapter marks; diffusers' helpers read it
        _check_loaded(model, adapter, ranks, getattr(result, "unexpected_keys", []))
    except BaseException:
        delete(model, adapter)
        raise
    return len(ranks)


def set_weights(model: torch.nn.Module, weights: Mapping[str, float]) -> None:
    """Make exactly these of the model's adapters active, each at its weight (adapters it lacks are skipped)."""
    present = adapters(model)
    names = [name for name in weights if name in present]
    if not names:
        return
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.set_adapter(names, inference_mode=True)  # frozen: nothing here trains
            for name in names:
                module.set_scale(name, weights[name])


def delete(model: torch.nn.Module, adapter: str) -> None:
    """Remove adapter `adapter` from every layer (a no-op when the model lacks it)."""
    if adapter in adapters(model) or any(_carries(module, adapter) for module in model.modules()):
        delete_adapter_layers(model, adapter)
        config = getattr(model, "peft_config", None)
        if config is not None:
            config.pop(adapter, None)


def unload(model: torch.nn.Module) -> None:
    """Take out peft's wrapper layers too: the model is as loaded."""
    recurse_remove_peft_layers(model)
    if hasattr(model, "peft_config"):
        del model.peft_config
    model._hf_peft_config_loaded = None


def adapters(model: torch.nn.Module) -> set[str]:
    return set(getattr(model, "peft_config", None) or ())


def count_layers(model: torch.nn.Module, adapter: str) -> int:
    return sum(1 for module in model.modules() if _carries(module, adapter))


def _carries(module: torch.nn.Module, adapter: str) -> bool:
    if not isinstance(module, LoraLayer):
        return False
    return adapter in module.lora_A or adapter in module.lora_embedding_A


def _ranks(state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Layer -> rank, from lora_A (rank × in) or lora_embedding_A (rank × tokens)."""
    ranks = {}
    for key, value in state_dict.items():
        for suffix in (".lora_A.weight", ".lora_embedding_A"):
            if key.endswith(suffix):
                ranks[key.removesuffix(suffix)] = value.shape[0]
    return ranks


def _config(ranks: dict[str, int], lora_bias: bool) -> LoraConfig:
    """One LoraConfig for these exact layers. Alpha = rank everywhere: peft's scale is then the adapter weight."""
    rank = Counter(ranks.values()).most_common(1)[0][0]
    # Patterns are regular expressions matched against module names: escape the dots.
    pattern = {re.escape(name): value for name, value in ranks.items() if value != rank}
    return LoraConfig(
        r=rank,
        lora_alpha=rank,
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        target_modules=sorted(ranks),
        lora_bias=lora_bias,
    )


def _check_loaded(model: torch.nn.Module, adapter: str, ranks: dict[str, int], unexpected: list[str]) -> None:
    """Every layer got its tensors: a layer left empty would still be on the meta device."""
    carrying = {name for name, module in model.named_modules() if _carries(module, adapter)}
    empty = sorted(
        name
        for name, parameter in model.named_parameters()
        if f".{adapter}" in name and parameter.device.type == "meta"
    )
    if carrying != set(ranks) or unexpected or empty:
        detail = sorted(set(ranks) ^ carrying)[:3] or unexpected[:3] or empty[:3]
        raise LoraError(f"peft did not attach every layer of this LoRA to the text encoder (like {detail}).")
