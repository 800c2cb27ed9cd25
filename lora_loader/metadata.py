"""The LoraConfig that diffusers (>= 0.34) writes into a LoRA file's header, read and checked.

`save_lora_weights` stores each component's LoraConfig as JSON under the header entry `lora_adapter_metadata`
(keys like `transformer.lora_alpha`, `transformer.alpha_pattern`). A PEFT file without `.alpha` tensors gets its
alphas from there, so they must be read, and a malformed entry (a list instead of a map, an alpha spelled
"eight") is a LoraError that says which entry is wrong, never a TypeError from deep inside a loader.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from peft.utils.other import get_pattern_key

from .errors import LoraError

HEADER_ENTRY = "lora_adapter_metadata"


@dataclass(frozen=True)
class ComponentConfig:
    """The alpha settings of one component's LoraConfig."""

    lora_alpha: float | None = None
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    use_rslora: bool = False

    def alpha(self, layer: str, rank: int) -> float | None:
        """The alpha for `layer` as plain LoRA maths (scale = alpha / rank); rsLoRA's alpha / sqrt(rank) folded in."""
        if self.lora_alpha is None:
            return None
        alpha = self.alpha_pattern.get(get_pattern_key(list(self.alpha_pattern), layer), self.lora_alpha)
        return alpha * rank**0.5 if self.use_rslora else alpha


@dataclass(frozen=True)
class AdapterMetadata:
    components: dict[str, ComponentConfig] = field(default_factory=dict)

    def alpha(self, module: str, rank: int) -> float | None:
        """The alpha the header gives `module` ("transformer.<layer>"), or None when it gives none."""
        component, _, layer = module.partition(".")
        config = self.components.get(component)
        return config.alpha(layer, rank) if config else None


def read_adapter_metadata(metadata: Mapping[str, str]) -> AdapterMetadata:
    """The checked `lora_adapter_metadata` of a file's header (empty when there is none)."""
    raw = metadata.get(HEADER_ENTRY)
    if not raw:
        return AdapterMetadata()
    try:
        config = json.loads(raw)
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise LoraError(
            f"This file's header has a {HEADER_ENTRY} entry that is not a JSON object, so its alphas "
            "cannot be read. Re-save the LoRA (diffusers' save_lora_weights writes it correctly)."
        )
    if any(key.endswith(".use_dora") and value for key, value in config.items()):
        raise LoraError("This file is a DoRA (its header says use_dora), which is not supported. Use a plain LoRA.")
    components = {}
    for component in sorted({key.partition(".")[0] for key in config if "." in key}):
        components[component] = _component(config, component)
    return AdapterMetadata(components)


def _component(config: dict[str, Any], component: str) -> ComponentConfig:
    def entry(name: str) -> Any:
        return config.get(f"{component}.{name}")

    alpha = entry("lora_alpha")
    if alpha is not None:
        _require(_is_number(alpha), f"{component}.lora_alpha is {alpha!r}, not a number")
    _require(entry("r") is None or _is_number(entry("r")), f"{component}.r is {entry('r')!r}, not a number")
    patterns = {}
    for name in ("alpha_pattern", "rank_pattern"):
        value = entry(name) or {}
        _require(isinstance(value, dict), f"{component}.{name} is a {type(value).__name__}, not a map of layers")
        for layer, number in value.items():
            _require(_is_number(number), f"{component}.{name}[{layer!r}] is {number!r}, not a number")
        patterns[name] = value
    rslora = entry("use_rslora") or False
    _require(isinstance(rslora, bool), f"{component}.use_rslora is {rslora!r}, not true or false")
    alphas = {layer: float(value) for layer, value in patterns["alpha_pattern"].items()}
    return ComponentConfig(None if alpha is None else float(alpha), alphas, rslora)


def _require(condition: bool, detail: str) -> None:
    if not condition:
        raise LoraError(
            f"This file's header entry {HEADER_ENTRY} is malformed: {detail}. Its alphas cannot be trusted; "
            "re-save the LoRA (diffusers' save_lora_weights writes it correctly)."
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
