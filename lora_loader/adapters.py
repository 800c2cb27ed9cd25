"""Attach, re-scale and remove the main and extra LoRA on FLUX dev/schnell: the only LoRA state in the process.

`AdapterManager.apply(model, main, extra, multiplier=...)` is the one call the service makes per prediction.
It brings the models to exactly the state the request asks for:

- Each LoRA file is one peft adapter, named after the file's key (`adapter_name`), so the same file always
  gets the same name, whichever slot (main or extra) it comes in. A file already attached to the requested
  model is only re-scaled, never read again; a file the request does not use is deleted. So at most two
  adapters exist in the whole process, and none on the model the request does not use (dev and schnell share
  the CLIP text encoder, so a LoRA's CLIP layers leave with it).
- Strengths are LINEAR: adapter weights go through `set_adapters` only (never `joint_attention_kwargs`, which
  multiplies with them), and the converted files carry their alpha folded in, so a LoRA at scale s changes each
  weight by exactly s·ΔW, scale 0 gives the base model's output bit for bit, and `multiplier` (1.5 for go_fast)
  multiplies both scales. CLIP layers get the same weight as the transformer layers of their LoRA.
- The same file as main and extra applies once, at the main scale, with a warning: summing the two would
  silently double a LoRA the user most likely named twice by mistake, and lora_scale is the scale the user
  set for "the" LoRA.
- Nothing is ever fused: fuse/unfuse drifts the bf16 base weights a little more on every cycle.
- A file that attaches to no transformer layer is a LoraError naming its format, never a silent no-op; a load
  that fails part-way leaves no trace of the new adapter, so the next request starts from a clean model.

If the LoRA has CLIP layers, the prompt must be encoded after `apply` (the service encodes per prediction,
after applying LoRAs). One prediction runs at a time (Cog), so there is no locking.

A compiled transformer must not gain or lose adapters (that recompiles): `lora_loader.hotswap`'s
`HotswapAdapterManager` serves those, with the same `apply` and the same rules, by swapping LoRAs into fixed
slots in place.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from diffusers import FluxPipeline
from peft.tuners.lora import LoraLayer

from .errors import LoraError, prefixed
from .formats import load_lora_state_dict

logger = logging.getLogger(__name__)


class _NoTextEncoderNotice(logging.Filter):
    """diffusers warns on every load of a LoRA without CLIP layers (most FLUX LoRAs) that it found none; this
    manager counts the layers each adapter attached to and says so itself, so the warning is only noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No LoRA keys associated to CLIPTextModel")


logging.getLogger("diffusers.loaders.lora_base").addFilter(_NoTextEncoderNotice())

MODELS = ("dev", "schnell")


class FluxPipelines(Protocol):
    """What the manager needs of `generation.pipelines.FluxModels` (lora_loader does not import generation)."""

    def pipeline(self, model: str, mode: str) -> FluxPipeline: ...


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA of a request: which file, how strong."""

    key: str  # a stable identity of the file's content or source (the cache key); names the adapter
    path: Path  # a validated .safetensors file
    scale: float
    source: str = ""  # what the user gave (URL, owner/model, ...), for log lines; defaults to the key

    @property
    def label(self) -> str:
        return self.source or self.key


@dataclass(frozen=True)
class ResidentLora:
    """An adapter attached to one model's transformer (and maybe the shared CLIP text encoder)."""

    adapter: str
    model: str
    label: str
    format: str
    layers: int  # transformer layers carrying it
    text_encoder_layers: int


def adapter_name(key: str) -> str:
    """The adapter name for a file key: stable across requests, and a valid module name whatever the key holds."""
    return "lora_" + hashlib.sha256(key.encode()).hexdigest()[:16]


class AdapterManager:
    """Owns every LoRA adapter on `models`; see the module docstring for the rules it keeps."""

    def __init__(self, models: FluxPipelines):
        self.models = models
        self.loads = 0  # files read and attached so far: re-scaling must never add to it
        self._resident: dict[str, ResidentLora] = {}

    @property
    def resident(self) -> tuple[ResidentLora, ...]:
        return tuple(self._resident.values())

    def apply(self, model: str, main: LoraSpec | None, extra: LoraSpec | None, *, multiplier: float = 1.0) -> None:
        """Make `model` run with exactly these LoRAs at scale × multiplier, and no other adapter exist."""
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, not {model!r}")
        wanted = _dedupe(main, extra)
        self._remove_all_but(model, {adapter_name(spec.key) for spec in wanted})
        for spec in wanted:
            self._ensure_attached(model, spec, spec.scale * multiplier)
        self._set_scales(model, wanted, multiplier)

    # Removing

    def _remove_all_but(self, model: str, keep: set[str]) -> None:
        """Delete adapters the request does not use, and every adapter on the other model."""
        stale = [lora for lora in self._resident.values() if lora.model != model or lora.adapter not in keep]
        for lora in stale:
            self._remove(lora)
        if stale and not self._resident:
            self._unload_everything()

    def _remove(self, lora: ResidentLora) -> None:
        self._pipeline(lora.model).delete_adapters([lora.adapter])  # its transformer and the shared CLIP
        del self._resident[lora.adapter]
        logger.info("Removed LoRA %s", lora.label)

    def _unload_everything(self) -> None:
        """With no adapter left, take out peft's (empty) wrapper layers too: the modules are as loaded."""
        for model in MODELS:
            self._pipeline(model).unload_lora_weights()

    # Attaching

    def _ensure_attached(self, model: str, spec: LoraSpec, scale: float) -> None:
        name = adapter_name(spec.key)
        if name in self._resident:
            logger.info("LoRA %s already loaded; scale %g", spec.label, scale)
            return
        start = time.perf_counter()
        lora = self._attach(model, spec, name)
        self._resident[name] = lora
        text_encoder = f" + {lora.text_encoder_layers} text-encoder layers" if lora.text_encoder_layers else ""
        logger.info(
            "Loaded LoRA %s (%s, %d layers%s) in %.2f s",
            lora.label,
            lora.format,
            lora.layers,
            text_encoder,
            time.perf_counter() - start,
        )

    def _attach(self, model: str, spec: LoraSpec, name: str) -> ResidentLora:
        """Read, convert, check and attach one file; on any failure remove whatever part of it got attached."""
        pipe = self._pipeline(model)
        try:
            with prefixed(f"LoRA {spec.label}"):
                converted = load_lora_state_dict(spec.path, pipe.transformer.config)
                _check_shapes(converted.state_dict, pipe, converted.format)
                layers = self._load(pipe, converted, name, model)
        except BaseException:
            self._discard(pipe, name)
            raise
        return ResidentLora(name, model, spec.label, converted.format, layers, _count_layers(pipe.text_encoder, name))

    def _load(self, pipe: FluxPipeline, converted, name: str, model: str) -> int:
        """Attach a converted state dict as adapter `name`; returns how many transformer layers carry it."""
        try:
            # low_cpu_mem_usage: build the LoRA layers empty and fill them from the file, skipping a random init
            # of every layer that the file overwrites anyway.
            pipe.load_lora_weights(converted.state_dict, adapter_name=name, low_cpu_mem_usage=True)
        except (ValueError, RuntimeError, KeyError, NotImplementedError) as error:
            raise LoraError(f"diffusers could not attach this {converted.format} LoRA: {error}") from error
        self.loads += 1
        layers = _count_layers(pipe.transformer, name)
        if layers == 0:
            raise LoraError(
                f"This {converted.format} LoRA attached to no layer of FLUX.1 [{model}]; use a LoRA trained for FLUX.1."
            )
        return layers

    def _discard(self, pipe: FluxPipeline, name: str) -> None:
        """Remove every trace of a half-loaded adapter (diffusers cleans the component that failed, not the rest)."""
        if any(name in adapters for adapters in pipe.get_list_adapters().values()):
            pipe.delete_adapters([name])
        if not self._resident:
            self._unload_everything()

    # Scaling

    def _set_scales(self, model: str, wanted: list[LoraSpec], multiplier: float) -> None:
        if not wanted:
            return
        weights = [spec.scale * multiplier for spec in wanted]
        # Also sets the CLIP weights (the same list) and makes these the only active adapters.
        self._pipeline(model).set_adapters([adapter_name(spec.key) for spec in wanted], weights)
        applied = ", ".join(f"{spec.label} {weight:g}" for spec, weight in zip(wanted, weights, strict=True))
        note = f" (LoRA scales x{multiplier:g} for go_fast)" if multiplier != 1.0 else ""
        logger.info("LoRA scales: %s%s", applied, note)

    def _pipeline(self, model: str) -> FluxPipeline:
        return self.models.pipeline(model, "txt2img")


def _dedupe(main: LoraSpec | None, extra: LoraSpec | None) -> list[LoraSpec]:
    if main and extra and main.key == extra.key:
        logger.warning(
            "extra_lora is the same LoRA as the main one (%s): applying it once, at the main scale %g "
            "(the extra scale %g is ignored)",
            main.label,
            main.scale,
            extra.scale,
        )
        return [main]
    return [spec for spec in (main, extra) if spec is not None]


def _count_layers(module: torch.nn.Module, adapter: str) -> int:
    return sum(1 for _ in _layers_with(module, adapter))


def _layers_with(module: torch.nn.Module, adapter: str) -> Iterator[str]:
    for name, child in module.named_modules():
        if isinstance(child, LoraLayer) and adapter in child.lora_A:
            yield name


def _check_shapes(state_dict: dict[str, torch.Tensor], pipe: FluxPipeline, fmt: str) -> None:
    """Every LoRA layer must fit its layer exactly. diffusers would zero-pad a too-narrow lora_A (meant for
    Control LoRAs) and load the result without a word, so a LoRA made for another model would run as noise."""
    for key, down in state_dict.items():
        if not key.endswith((".lora_A.weight", ".lora_linear_layer.down.weight")):
            continue
        up = state_dict[key.replace(".lora_A.", ".lora_B.").replace(".down.weight", ".up.weight")]
        module = key.removesuffix(".lora_A.weight").removesuffix(".lora_linear_layer.down.weight")
        layer = _live_linear(pipe, module)
        if layer is None:
            raise LoraError(f"This {fmt} LoRA has a layer {module} that this FLUX.1 model does not have.")
        if (up.shape[0], down.shape[1]) != (layer.out_features, layer.in_features):
            raise LoraError(
                f"LoRA layer {module} maps {down.shape[1]} -> {up.shape[0]} features, but this FLUX.1 model's "
                f"maps {layer.in_features} -> {layer.out_features}: the LoRA was made for another model."
            )


def _live_linear(pipe: FluxPipeline, module: str) -> torch.nn.Linear | None:
    component, _, name = module.partition(".")
    root = getattr(pipe, component)
    if component == "text_encoder" and not hasattr(root, "text_model"):
        name = name.removeprefix("text_model.")  # transformers 5 flattened CLIPTextModel
    try:
        layer = root.get_submodule(name)
    except AttributeError:
        return None
    layer = layer.get_base_layer() if isinstance(layer, LoraLayer) else layer
    return layer if isinstance(layer, torch.nn.Linear) else None
