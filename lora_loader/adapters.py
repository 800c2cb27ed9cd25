"""Attach, re-scale and remove the main and extra LoRA on FLUX dev/schnell: the only LoRA state in the process.

`AdapterManager.apply(model, main, extra, multiplier=...)` is the one call the service makes per prediction.
It brings the models to exactly the state the request asks for:

- Each LoRA file is one peft adapter, named after the file's key (`adapter_name`), so the same file always
  gets the same name, whichever slot (main or extra) it comes in. A file already attached to the requested
  model is only re-scaled, never read again; a file the request does not use is deleted. So at most two
  adapters exist in the whole process, and none on the model the request does not use.
- A file is applied whole or refused whole (`lora_loader.formats`): its transformer layers go onto the
  transformer through diffusers, its CLIP-L and T5-XXL layers (and CLIP embedding LoRAs) onto the text encoders
  through `lora_loader.text_encoders`, and bias changes with them. The text encoders are shared by dev and
  schnell, so a LoRA's text-encoder layers leave with it.
- Strengths are LINEAR: adapter weights are set per model (never `joint_attention_kwargs`, which multiplies with
  them), and the converted files carry their alpha folded in, so a LoRA at scale s changes each weight (and
  bias) by exactly s·ΔW, scale 0 gives the base model's output bit for bit, and `multiplier` multiplies both
  scales. Text-encoder layers get the same weight as the transformer layers of their LoRA.
- The same file as main and extra applies once, at the main scale, with a warning: summing the two would
  silently double a LoRA the user most likely named twice by mistake, and lora_scale is the scale the user
  set for "the" LoRA.
- Nothing is ever fused: fuse/unfuse drifts the bf16 base weights a little more on every cycle.
- A file that attaches to no transformer layer is a LoraError naming its format, never a silent no-op; every
  check runs before anything is attached, and a load that fails part-way leaves no trace of the new adapter, so
  the next request starts from a clean model.

If the LoRA has text-encoder layers, the prompt must be encoded after `apply` (the service encodes per
prediction, after applying LoRAs). One prediction runs at a time (Cog), so there is no locking.

A compiled transformer must not gain or lose adapters (that recompiles): `lora_loader.hotswap`'s
`HotswapAdapterManager` serves those, with the same `apply` and the same rules, by swapping LoRAs into fixed
slots in place.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from diffusers import FluxPipeline
from peft.tuners.lora import LoraLayer

from . import text_encoders
from .errors import LoraError, prefixed
from .formats import ConvertedLora, load_lora_state_dict
from .targets import TEXT_ENCODERS, TRANSFORMER, LoraTargets

logger = logging.getLogger(__name__)

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
    text_encoder_layers: int  # CLIP-L and T5-XXL layers carrying it


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

    def arm(self) -> None:
        """Nothing to do: plain adapters run uncompiled (the compiled path's slots are `HotswapAdapterManager.arm`)."""

    def empty(self) -> None:
        """No adapter on any model: what the server does when a request runs on another execution path."""
        for lora in list(self._resident.values()):
            self._remove(lora)
        self._unload_everything()

    # Removing

    def _remove_all_but(self, model: str, keep: set[str]) -> None:
        """Delete adapters the request does not use, and every adapter on the other model."""
        stale = [lora for lora in self._resident.values() if lora.model != model or lora.adapter not in keep]
        for lora in stale:
            self._remove(lora)
        if stale and not self._resident:
            self._unload_everything()

    def _remove(self, lora: ResidentLora) -> None:
        detach(self._pipeline(lora.model), lora.adapter)  # its transformer and the shared text encoders
        del self._resident[lora.adapter]
        logger.info("Removed LoRA %s", lora.label)

    def _unload_everything(self) -> None:
        """With no adapter left, take out peft's (empty) wrapper layers too: the modules are as loaded."""
        for model in MODELS:
            unload(self._pipeline(model))

    # Attaching

    def _ensure_attached(self, model: str, spec: LoraSpec, scale: float) -> None:
        name = adapter_name(spec.key)
        if name in self._resident:
            logger.info("LoRA %s already loaded; scale %g", spec.label, scale)
            return
        start = time.perf_counter()
        lora, converted = self._attach(model, spec, name)
        self._resident[name] = lora
        logger.info(
            "Loaded LoRA %s (%s, %s) in %.2f s",
            lora.label,
            lora.format,
            converted.describe(),
            time.perf_counter() - start,
        )

    def _attach(self, model: str, spec: LoraSpec, name: str) -> tuple[ResidentLora, ConvertedLora]:
        """Read, convert, check and attach one file; on any failure remove whatever part of it got attached."""
        pipe = self._pipeline(model)
        try:
            with prefixed(f"LoRA {spec.label}"):
                converted = load_lora_state_dict(spec.path, LoraTargets.of_pipeline(pipe))
                layers, text_layers = attach(pipe, converted, name)
                self.loads += 1
        except BaseException:
            self._discard(pipe, name)
            raise
        return ResidentLora(name, model, spec.label, converted.format, layers, text_layers), converted

    def _discard(self, pipe: FluxPipeline, name: str) -> None:
        """Remove every trace of a half-loaded adapter, on every component it may have reached."""
        detach(pipe, name)
        if not self._resident:
            self._unload_everything()

    # Scaling

    def _set_scales(self, model: str, wanted: list[LoraSpec], multiplier: float) -> None:
        if not wanted:
            return
        weights = [spec.scale * multiplier for spec in wanted]
        names = [adapter_name(spec.key) for spec in wanted]
        set_weights(self._pipeline(model), dict(zip(names, weights, strict=True)))
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


# One pipeline's adapters, on all its components at once (the manager's building blocks; tests use them too).


def attach(pipe: FluxPipeline, converted: ConvertedLora, adapter: str) -> tuple[int, int]:
    """Attach every part of a converted LoRA as `adapter`: returns (transformer layers, text-encoder layers).
    On failure a part may be attached: the caller detaches."""
    try:
        # low_cpu_mem_usage: build the LoRA layers empty and fill them from the file, skipping a random init of
        # every layer that the file overwrites anyway.
        pipe.transformer.load_lora_adapter(
            _like(converted.part(TRANSFORMER), pipe.transformer), adapter_name=adapter, prefix=None,
            low_cpu_mem_usage=True,
        )  # fmt: skip
        text_layers = 0
        for component, encoder in _text_encoders(pipe).items():
            if converted.layers(component):
                text_layers += text_encoders.attach(encoder, converted.part(component), adapter)
    except (ValueError, RuntimeError, KeyError, NotImplementedError) as error:
        # Every check ran before this, so a library refused what it should take: say so in plain words, and keep
        # the library's own words for the log.
        logger.warning("Attaching LoRA adapter %s failed: %r", adapter, error)
        raise LoraError(
            f"This {converted.format} LoRA passed every check but could not be attached; the server log has the "
            "details."
        ) from error
    layers = sum(1 for module in pipe.transformer.modules() if isinstance(module, LoraLayer) and adapter in module.r)
    if layers == 0:
        raise LoraError(f"This {converted.format} LoRA attached to no layer of FLUX.1; use a LoRA trained for FLUX.1.")
    return layers, text_layers


def detach(pipe: FluxPipeline, adapter: str) -> None:
    """`adapter` off the transformer and both text encoders (each a no-op where it is absent)."""
    if adapter in (getattr(pipe.transformer, "peft_config", None) or {}):
        with warnings.catch_warnings():
            # With the compiled path's slots on the same modules, peft says which adapter it activates instead;
            # the compiled path re-arms its own before it runs (lora_loader/hotswap.py), so this is no news.
            warnings.filterwarnings("ignore", "Adapter .* was active which is now deleted")
            pipe.transformer.delete_adapters([adapter])
    for encoder in _text_encoders(pipe).values():
        text_encoders.delete(encoder, adapter)


def unload(pipe: FluxPipeline) -> None:
    """No adapter of ours left: take out peft's (empty) wrapper layers too, so the modules are as loaded. A
    transformer that also carries the compiled path's LoRA slots (lora_loader/hotswap.py, same modules) keeps
    its wrappers: the slots live in them."""
    if not getattr(pipe.transformer, "peft_config", None):
        pipe.transformer.unload_lora()
    for encoder in _text_encoders(pipe).values():
        text_encoders.unload(encoder)


def set_weights(pipe: FluxPipeline, weights: dict[str, float]) -> None:
    """Exactly these adapters active, each at its weight, on the transformer and the text encoders."""
    pipe.transformer.set_adapters(list(weights), list(weights.values()))
    for encoder in _text_encoders(pipe).values():
        text_encoders.set_weights(encoder, weights)


def _text_encoders(pipe: FluxPipeline) -> dict[str, torch.nn.Module]:
    return {name: getattr(pipe, name) for name in TEXT_ENCODERS if getattr(pipe, name, None) is not None}


def _like(state_dict: dict[str, torch.Tensor], module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors in the module's dtype and device: the LoRA layers take them as they are (low_cpu_mem_usage),
    and float32 LoRA layers on a bf16 model would run their matmuls in float32."""
    parameter = next(module.parameters())
    return {key: value.to(device=parameter.device, dtype=parameter.dtype) for key, value in state_dict.items()}
