"""Read a LoRA file, whichever trainer wrote it, and convert ALL of it for one FLUX pipeline, or refuse it whole.

A file is a set of tensors named `<layer><suffix>`. The suffix says what a tensor is (see `ROLES`): the down and up
matrices of a low-rank change (kohya `lora_down`/`lora_up`, PEFT `lora_A`/`lora_B`, XLabs `down`/`up`), its alpha,
a bias change (ComfyUI `diff_b`, PEFT `lora_B.bias`), or PEFT's embedding factors. The layer part is resolved
against the live pipeline (`targets.LoraTargets`), whichever vocabulary it is written in:

- diffusers/PEFT: `transformer.transformer_blocks.0.attn.to_q.lora_A.weight`, `text_encoder.` (CLIP),
  `text_encoder_2.` (T5); ai-toolkit (Replicate's trainer), diffusers, SimpleTuner, OneTrainer "diffusers".
- PEFT without the prefix: `transformer_blocks.0.…`, `base_model.model.…`; raw PEFT saves.
- BFL names with PEFT tensors: `diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight`, with
  `text_encoders.clip_l.transformer.…` and `text_encoders.t5xxl.transformer.…`; OneTrainer "ComfyUI".
- kohya: `lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight` + `.alpha`, `lora_te1_` CLIP, `lora_te3_`
  (sd-scripts) or `lora_te2_` (OneTrainer) T5; sd-scripts, OneTrainer "kohya".
- ComfyUI: `diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight`, `.diff_b`, and its generic
  `text_encoders.<weight>` names (CLIP embeddings too); ComfyUI's Train LoRA node.
- kohya mixture: `lora_transformer_transformer_blocks_0_attn_to_q.lora_down.weight`; OneTrainer "legacy".
- LyCORIS names: `lycoris_transformer_blocks_0_attn_to_q.lora_down.weight`; SimpleTuner with LyCORIS `lora`.
- OMI: `transformer.double_blocks.0.img_attn.qkv.0.lora_down.weight`, `clip_l.`, `t5.`; OneTrainer "OMI".
- XLabs: `double_blocks.0.processor.qkv_lora1.down.weight`; XLabs x-flux.

What a converted LoRA is (`ConvertedLora.state_dict`): for each changed layer, keyed
`<component>.<live layer name>.`, either `lora_A.weight` + `lora_B.weight` (+ `lora_B.bias`, the bias change, on
every layer of a component once any layer of it has one) or, for a CLIP embedding, PEFT's `lora_embedding_A` +
`lora_embedding_B`. Components: `transformer`, `text_encoder` (CLIP-L), `text_encoder_2` (T5-XXL). Each layer's
alpha / rank is folded into lora_A, so its weight changes by exactly lora_B @ lora_A (and its bias by lora_B.bias)
at adapter weight 1, and the adapter weight is the only strength knob left: that keeps LoRA scales linear.

The rules:
- Every tensor is applied or the file is refused, with one message naming what cannot be applied and why: a
  layer this model lacks (a dev-only guidance layer on schnell, a layer of another model), an unknown tensor, a
  full-weight difference, LyCORIS LoKr/LoHa, DoRA, a FLUX Control LoRA. Nothing is dropped with a warning.
- Every tensor is checked first (`validate`): finite floats, matrices of matching rank, scalar alphas, bias
  vectors, then shapes against the live layer they land on (a LoRA for a model of another width is refused).
- A fused BFL layer's output rows split over its diffusers layers in BFL's order (q, k, v[, mlp]); the final
  layer's modulation swaps halves. A block-diagonal up matrix (kohya's `split_qkv`) gives each part only its own
  rank columns, so nothing is carried as zeros (and the compiled path's rank limit applies per part).
- Two file layers landing on one diffusers layer (OMI's split pieces never do, but a file mixing vocabularies
  might) add up, as every loader applies them: their ranks are concatenated.

Our converter, not diffusers': diffusers' FLUX converters drop what they do not know silently (T5 layers, bias
changes, BFL-named PEFT files), hard-code FLUX.1's widths, and emit CLIP names transformers 5 ignores. The tests
check our conversion against diffusers' where diffusers' is right (kohya and XLabs at FLUX.1's size).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from . import validate
from .errors import LoraError
from .metadata import AdapterMetadata, read_adapter_metadata
from .targets import CLIP, COMPONENT_NAMES, T5, TRANSFORMER, BflTarget, LoraTargets

logger = logging.getLogger(__name__)

# Format names, as users read them in logs and errors.
DIFFUSERS = "diffusers/PEFT"
PEFT_WITHOUT_PREFIX = "PEFT without the transformer. prefix"
BFL_PEFT = "PEFT with BFL layer names"
KOHYA = "kohya sd-scripts"
COMFYUI = "ComfyUI (kohya tensors, diffusion_model. names)"
MIXTURE = "kohya mixture (lora_transformer_ names)"
LYCORIS = "LyCORIS-named LoRA (lycoris_ names)"
OMI = "OneTrainer OMI (transformer. with BFL names)"
XLABS = "XLabs"

# Tensor roles, by key suffix. Longer suffixes first: ".lora_linear_layer.down.weight" also ends in ".down.weight".
DOWN, UP, BIAS, ALPHA, EMBEDDING_A, EMBEDDING_B = "down", "up", "bias", "alpha", "embedding A", "embedding B"
ROLES = sorted(
    {
        ".lora_down.weight": DOWN,
        ".lora_up.weight": UP,
        ".lora_A.weight": DOWN,
        ".lora_B.weight": UP,
        ".lora_B.bias": BIAS,
        ".lora_linear_layer.down.weight": DOWN,  # diffusers' older text-encoder layout
        ".lora_linear_layer.up.weight": UP,
        ".lora.down.weight": DOWN,
        ".lora.up.weight": UP,
        ".down.weight": DOWN,  # XLabs' LoRALinearLayer
        ".up.weight": UP,
        ".lora_embedding_A": EMBEDDING_A,  # PEFT's embedding LoRA: A is rank × tokens, B width × rank
        ".lora_embedding_B": EMBEDDING_B,
        ".alpha": ALPHA,
        ".diff_b": BIAS,  # ComfyUI: added to the bias, times the strength
    }.items(),
    key=lambda item: -len(item[0]),
)
PEFT_ROLES = (".lora_A.weight", ".lora_B.weight", ".lora_B.bias", ".lora_embedding_A", ".lora_embedding_B")

# Tensors no FLUX LoRA path can carry, by what they are: (key test, what it is, why it cannot be applied).
NOT_APPLICABLE = (
    (lambda key: key.endswith(".diff"), "full-weight differences (.diff)", "only low-rank and bias changes apply"),
    (lambda key: key.startswith("bundle_emb."), "bundled textual-inversion embeddings (bundle_emb.)",
     "they need new tokens in the tokenizers"),
    (lambda key: ".lora_mid." in key, "LoCon Tucker factors (lora_mid)", "FLUX has no convolution layers"),
    (lambda key: key.endswith(".scalar"), "LyCORIS scalars (.scalar)", "re-save the LoRA without use_scalar"),
    (lambda key: ".oft_" in key or key.endswith(".oft_blocks"), "OFT/BOFT blocks", "they are not LoRA"),
)  # fmt: skip

# Prefixes that mark UNet LoRAs (SD 1.x/2.x, SDXL), in diffusers and in original naming.
UNET_MARKERS = ("down_blocks", "up_blocks", "mid_block", "input_blocks", "output_blocks", "middle_block")


@dataclass(frozen=True)
class ConvertedLora:
    """A LoRA in the layout of the module docstring, and the format it was read as."""

    state_dict: dict[str, torch.Tensor]
    format: str

    def part(self, component: str) -> dict[str, torch.Tensor]:
        """The tensors of one component, keyed relative to it (`<layer>.lora_A.weight`)."""
        prefix = component + "."
        return {key.removeprefix(prefix): value for key, value in self.state_dict.items() if key.startswith(prefix)}

    def layers(self, component: str) -> list[str]:
        """The layers of `component` this LoRA changes."""
        return sorted({_layer_of(key) for key in self.part(component)})

    def has_bias(self, component: str) -> bool:
        return any(key.endswith(".lora_B.bias") for key in self.part(component))

    def embeddings(self, component: str) -> list[str]:
        return sorted(_layer_of(key) for key in self.part(component) if key.endswith(".lora_embedding_A"))

    def describe(self) -> str:
        """What it changes, for log lines: "494 transformer layers + 72 CLIP-L layers (+ bias changes)"."""
        parts = []
        for component in (TRANSFORMER, CLIP, T5):
            count = len(self.layers(component))
            if count:
                parts.append(f"{count} {SHORT_NAMES[component]} layers")
        bias = " with bias changes" if any(self.has_bias(c) for c in (TRANSFORMER, CLIP, T5)) else ""
        return " + ".join(parts) + bias


SHORT_NAMES = {TRANSFORMER: "transformer", CLIP: "CLIP-L", T5: "T5-XXL"}


def load_lora_state_dict(path: str | Path, targets: LoraTargets) -> ConvertedLora:
    """Read a .safetensors LoRA (never a pickle) and convert it for the pipeline `targets` describes."""
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except SafetensorError as error:
        raise LoraError(f"This LoRA is not a readable .safetensors file (the reader says: {error}).") from error
    return convert_lora_state_dict(tensors, targets, metadata)


def convert_lora_state_dict(
    tensors: Mapping[str, torch.Tensor], targets: LoraTargets, metadata: Mapping[str, str] | None = None
) -> ConvertedLora:
    """Convert every tensor of a file for `targets`, or raise a LoraError saying what cannot be applied."""
    keys = sorted(tensors)
    _refuse_other_kinds(keys)
    validate.check_tensor_values(dict(tensors), integers_allowed=lambda key: key.endswith(".alpha"))
    groups = _groups(tensors)
    resolved = _resolve_all(groups, targets)
    fmt = _format_of(resolved)
    updates = _updates(resolved, read_adapter_metadata(metadata or {}), targets)
    return ConvertedLora(_state_dict(updates, targets), fmt)


# Whole-file refusals: files that are not plain LoRAs at all.


def _refuse_other_kinds(keys: list[str]) -> None:
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
    if not any("lora" in key.lower() or key.endswith(".diff_b") for key in keys):
        raise LoraError(
            f"This file has no LoRA tensors: its {len(keys)} tensors (keys like {_sample(keys)}) look like a full "
            "model checkpoint. Pass a LoRA .safetensors file instead."
        )
    unet = [key for key in keys if key.startswith("unet.") or any(marker in key for marker in UNET_MARKERS)]
    unet += [key for key in keys if key.startswith("lora_te2_text_model_")]  # SDXL's second CLIP
    if unet:
        style = "kohya" if any(key.endswith(".lora_down.weight") for key in unet) else "diffusers"
        raise LoraError(
            f"This file looks like an SD 1.x/SDXL {style} LoRA (keys like {_sample(unet)}); "
            "it attaches to no FLUX layer. Use a LoRA trained for FLUX.1."
        )


def _lycoris_message(kind: str, keys: list[str]) -> str:
    sample = _sample(k for k in keys if kind.lower() in k)
    return (
        f"This file is a LyCORIS {kind} (keys like {sample}), which is not supported. "
        "Use a plain LoRA (lora_down/lora_up or lora_A/lora_B tensors)."
    )


# Grouping: file layer -> its tensors by role.


@dataclass
class _Group:
    """One layer of the file: its tensors by role, each as (key, tensor)."""

    module: str
    tensors: dict[str, tuple[str, torch.Tensor]] = field(default_factory=dict)

    def key(self, role: str) -> str:
        return self.tensors[role][0]

    def get(self, role: str) -> torch.Tensor | None:
        entry = self.tensors.get(role)
        return None if entry is None else entry[1]

    @property
    def peft_named(self) -> bool:
        return any(key.endswith(PEFT_ROLES) for key, _ in self.tensors.values())


def _groups(tensors: Mapping[str, torch.Tensor]) -> list[_Group]:
    groups: dict[str, _Group] = {}
    unknown = []
    for key in sorted(tensors):
        role = _role(key)
        if role is None:
            unknown.append(key)
            continue
        suffix, role = role
        group = groups.setdefault(key.removesuffix(suffix), _Group(key.removesuffix(suffix)))
        if role in group.tensors:
            raise LoraError(
                f"Tensors {group.key(role)} and {key} are both the {role} weights of layer {group.module}: "
                "the file mixes two LoRAs or was written wrongly."
            )
        group.tensors[role] = (key, tensors[key])
    if unknown and not groups:
        raise LoraError(f"This file is not a LoRA format this server knows (keys like {_sample(unknown)}).")
    if unknown:
        raise LoraError(_not_applicable_message(unknown))
    for group in groups.values():
        _check_complete(group)
    return list(groups.values())


def _role(key: str) -> tuple[str, str] | None:
    for suffix, role in ROLES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return suffix, role
    return None


def _check_complete(group: _Group) -> None:
    for first, second in ((DOWN, UP), (EMBEDDING_A, EMBEDDING_B)):
        present = [role for role in (first, second) if role in group.tensors]
        if len(present) == 1:
            missing = second if present[0] == first else first
            raise LoraError(
                f"This LoRA file is incomplete: it has {group.key(present[0])} but no {missing} weights for "
                f"layer {group.module}."
            )
    if ALPHA in group.tensors and not ({DOWN, EMBEDDING_A} & set(group.tensors)):
        raise LoraError(f"This LoRA file is incomplete: it has {group.key(ALPHA)} but no weights for that layer.")


def _not_applicable_message(keys: list[str]) -> str:
    """One message for every tensor no path can carry, grouped by what it is."""
    reasons: dict[tuple[str, str], list[str]] = {}
    for key in keys:
        for test, what, why in NOT_APPLICABLE:
            if test(key):
                reasons.setdefault((what, why), []).append(key)
                break
        else:
            reasons.setdefault(("tensors that are not LoRA weights", "their names end in no LoRA suffix"), []).append(
                key
            )
    parts = [f"{len(found)} {what} (like {_sample(found)}): {why}" for (what, why), found in reasons.items()]
    return (
        f"This LoRA file has {len(keys)} tensor(s) this server cannot apply, so none of it is applied: "
        + "; ".join(parts)
        + "."
    )


# Resolving: file layer -> the live layers it lands on.


@dataclass(frozen=True)
class _Resolved:
    group: _Group
    component: str
    label: str | None  # the format this layer's name is written in (transformer layers only)
    target: BflTarget | None  # None: it names no layer of this model


class _Names:
    """Every vocabulary a file can name a layer in, resolved against one pipeline's live layers."""

    def __init__(self, targets: LoraTargets):
        self.targets = targets
        self.transformer = targets.names(TRANSFORMER)
        self.flat_transformer = {name.replace(".", "_"): name for name in self.transformer}
        self.bfl = targets.bfl_names
        self.flat_bfl = {name.replace(".", "_"): target for name, target in self.bfl.items()}
        self.clip = {_with_text_model(name): name for name in targets.names(CLIP)}
        self.flat_clip = {name.replace(".", "_"): live for name, live in self.clip.items()}
        self.flat_t5 = {name.replace(".", "_"): name for name in targets.names(T5)}
        # (prefix, component, resolver, format label); the first prefix that matches decides.
        self.namespaces = [
            ("text_encoders.clip_l.transformer.", CLIP, self._clip, None),
            ("text_encoders.t5xxl.transformer.", T5, self._t5, None),
            ("model.diffusion_model.", TRANSFORMER, self._bfl, BFL_PEFT),
            ("diffusion_model.", TRANSFORMER, self._bfl, BFL_PEFT),
            ("base_model.model.", TRANSFORMER, self._diffusers, PEFT_WITHOUT_PREFIX),
            ("lora_transformer_", TRANSFORMER, self._flat_diffusers, MIXTURE),
            ("lycoris_", TRANSFORMER, self._flat_diffusers, LYCORIS),
            ("lora_unet_", TRANSFORMER, self._flat_bfl, KOHYA),
            ("text_encoder_2.", T5, self._t5, None),
            ("text_encoder.", CLIP, self._clip, None),
            ("transformer.", TRANSFORMER, self._diffusers_or_omi, DIFFUSERS),
            ("lora_te1_", CLIP, self._flat_clip, None),
            ("lora_te2_", T5, self._flat_t5, None),  # OneTrainer's kohya names (SDXL's second CLIP is refused above)
            ("lora_te3_", T5, self._flat_t5, None),  # sd-scripts
            ("lora_te_", CLIP, self._flat_clip, None),
            ("clip_l.", CLIP, self._clip, None),  # OMI
            ("t5.", T5, self._t5, None),  # OMI
            ("", TRANSFORMER, self._bare, PEFT_WITHOUT_PREFIX),
        ]

    def resolve(self, group: _Group) -> _Resolved:
        for prefix, component, resolver, label in self.namespaces:
            if group.module.startswith(prefix):
                found = resolver(group.module.removeprefix(prefix))
                if isinstance(found, tuple):  # (target, label) from resolvers that tell vocabularies apart
                    found, label = found
                if component == TRANSFORMER and label == BFL_PEFT and not group.peft_named:
                    label = COMFYUI
                return _Resolved(group, component, label, found)
        raise AssertionError("the empty prefix matches every key")

    def _diffusers(self, name: str) -> BflTarget | None:
        return BflTarget((name,)) if name in self.transformer else None

    def _flat_diffusers(self, name: str) -> BflTarget | None:
        return self._diffusers(self.flat_transformer.get(name, ""))

    def _bfl(self, name: str) -> BflTarget | None:
        return self.bfl.get(name)

    def _flat_bfl(self, name: str) -> BflTarget | None:
        return self.flat_bfl.get(name)

    def _diffusers_or_omi(self, name: str) -> tuple[BflTarget | None, str]:
        if name in self.transformer or not self._bfl(name):
            return self._diffusers(name), DIFFUSERS
        return self._bfl(name), OMI

    def _bare(self, name: str) -> tuple[BflTarget | None, str]:
        if name in self.transformer:
            return self._diffusers(name), PEFT_WITHOUT_PREFIX
        label = XLABS if ".processor." in name else BFL_PEFT
        return self._bfl(name), label

    def _clip(self, name: str) -> BflTarget | None:
        live = self.clip.get(_with_text_model(name))
        return BflTarget((live,)) if live else None

    def _flat_clip(self, name: str) -> BflTarget | None:
        live = self.flat_clip.get(name if name.startswith("text_model_") else "text_model_" + name)
        return BflTarget((live,)) if live else None

    def _t5(self, name: str) -> BflTarget | None:
        return BflTarget((name,)) if name in self.targets.names(T5) else None

    def _flat_t5(self, name: str) -> BflTarget | None:
        live = self.flat_t5.get(name)
        return BflTarget((live,)) if live else None


def _with_text_model(name: str) -> str:
    """CLIP layer names with transformers 4's `text_model.` level, which transformers 5 dropped."""
    return name if name.startswith("text_model.") else "text_model." + name


def _resolve_all(groups: list[_Group], targets: LoraTargets) -> list[_Resolved]:
    names = _Names(targets)
    resolved = [names.resolve(group) for group in groups]
    if not any(item.component == TRANSFORMER for item in resolved):
        raise LoraError(
            f"This LoRA only changes the text encoders (keys like {_sample(g.module for g in groups)}); "
            "it attaches to no FLUX transformer layer."
        )
    missing = [item for item in resolved if item.target is None]
    if missing:
        raise LoraError(_missing_message(missing, resolved, targets))
    return resolved


def _missing_message(missing: list[_Resolved], resolved: list[_Resolved], targets: LoraTargets) -> str:
    fmt = _format_of(resolved)
    sample = _sample(key for item in resolved for key, _ in item.group.tensors.values())
    if len(missing) == len([item for item in resolved if item.component == TRANSFORMER]) and all(
        item.component == TRANSFORMER for item in missing
    ):
        return (
            f"This file looks like a {fmt} LoRA (keys like {sample}), but it attaches to no "
            "layer of this FLUX.1 model. Use a LoRA trained for FLUX.1."
        )
    guidance = [item.group.module for item in missing if "guidance" in item.group.module]
    if guidance and len(guidance) == len(missing) and not targets.has_guidance():
        return (
            f"This {fmt} LoRA changes {len(guidance)} guidance-embedder layer(s) ({_sample(guidance)}), which FLUX.1 "
            "[schnell] does not have: it was trained on FLUX.1 [dev]. Use it with dev (go_fast/schnell cannot "
            "apply it whole)."
        )
    by_component = Counter(COMPONENT_NAMES[item.component] for item in missing)
    where = ", ".join(f"{count} for the {name}" for name, count in sorted(by_component.items()))
    return (
        f"This {fmt} LoRA has {len(missing)} layer(s) that name no layer of this FLUX.1 model ({where}; like "
        f"{_sample(item.group.module for item in missing)}), so none of it is applied: it was made for another "
        "model or a newer trainer version."
    )


def _format_of(resolved: list[_Resolved]) -> str:
    labels = Counter(item.label for item in resolved if item.component == TRANSFORMER and item.label)
    return labels.most_common(1)[0][0] if labels else DIFFUSERS


# Updates: what each live layer receives.


@dataclass
class _Update:
    """The change one live layer receives: ΔW = Σ up_i @ down_i (alpha folded into down_i), and a bias change."""

    downs: list[torch.Tensor] = field(default_factory=list)
    ups: list[torch.Tensor] = field(default_factory=list)
    bias: torch.Tensor | None = None


def _updates(
    resolved: list[_Resolved], metadata: AdapterMetadata, targets: LoraTargets
) -> dict[tuple[str, str], _Update]:
    updates: dict[tuple[str, str], _Update] = {}
    for item in resolved:
        down, up, bias = _factors(item.group, metadata)
        parts = item.target.names
        rows = [_check_layer(item, name, down, up, bias, targets) for name in parts]
        for role, tensor in ((UP, up), (BIAS, bias)):
            if tensor is not None:
                _check_rows(item, rows, role, tensor)
        if item.target.swap_halves:
            up = None if up is None else torch.cat(up.chunk(2)[::-1])
            bias = None if bias is None else torch.cat(bias.chunk(2)[::-1])
        for index, name in enumerate(parts):
            start, stop = sum(rows[:index]), sum(rows[: index + 1])
            update = updates.setdefault((item.component, name), _Update())
            if up is not None:
                part_down, part_up = (down, up) if len(parts) == 1 else _own_columns(down, up[start:stop])
                update.downs.append(part_down)
                update.ups.append(part_up)
            if bias is not None:
                part = bias[start:stop].float()
                update.bias = part if update.bias is None else update.bias + part
    return updates


def _factors(
    group: _Group, metadata: AdapterMetadata
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(down with alpha / rank folded in, up, bias change) of one file layer; ΔW = up @ down."""
    bias = group.get(BIAS)
    if bias is not None:
        bias = validate.vector(group.key(BIAS), bias)
    if DOWN in group.tensors:
        down = validate.matrix(group.key(DOWN), group.get(DOWN))
        up = validate.matrix(group.key(UP), group.get(UP))
        validate.check_ranks(group.key(DOWN), down, group.key(UP), up)
    elif EMBEDDING_A in group.tensors:  # PEFT embedding: ΔW = (B @ A)ᵀ = Aᵀ @ Bᵀ
        a = validate.matrix(group.key(EMBEDDING_A), group.get(EMBEDDING_A))
        b = validate.matrix(group.key(EMBEDDING_B), group.get(EMBEDDING_B))
        validate.check_ranks(group.key(EMBEDDING_A), a, group.key(EMBEDDING_B), b)
        down, up = b.T, a.T
    else:
        return None, None, bias  # a bias change alone
    rank = down.shape[0]
    alpha = validate.alpha_value(group.key(ALPHA), group.get(ALPHA)) if ALPHA in group.tensors else None
    if alpha is None:
        alpha = metadata.alpha(group.module, rank)
    if alpha is not None and alpha != rank:
        down = down.float() * (alpha / rank)  # in float32, so fp16 and bf16 files lose nothing here
    return down, up, bias


def _check_layer(item: _Resolved, name: str, down, up, bias, targets: LoraTargets) -> int:
    """The live layer's rows, after checking that this file layer fits it."""
    layer = targets.layer(item.component, name)
    embedding_roles = EMBEDDING_A in item.group.tensors
    if embedding_roles and not layer.embedding:
        raise LoraError(
            f"Tensor {item.group.key(EMBEDDING_A)} is an embedding LoRA, but {name} of the "
            f"{COMPONENT_NAMES[item.component]} is not an embedding."
        )
    if down is not None and down.shape[1] != layer.cols:
        what = "embedding width" if layer.embedding else "input features"
        raise LoraError(
            f"Tensor {_down_key(item.group)} has {down.shape[1]} {what}, but this FLUX.1 model's {name} "
            f"({COMPONENT_NAMES[item.component]}) has {layer.cols}: the LoRA was made for a model of another size."
        )
    if bias is not None and not layer.bias and item.group.key(BIAS).endswith(".diff_b"):
        # ComfyUI adds diff_b to the layer's own bias; PEFT's lora_B.bias is the LoRA's and needs none.
        raise LoraError(
            f"Tensor {item.group.key(BIAS)} changes the bias of {name} ({COMPONENT_NAMES[item.component]}), "
            "which has no bias: the LoRA was made for another model."
        )
    return layer.rows


def _check_rows(item: _Resolved, rows: list[int], role: str, tensor: torch.Tensor) -> None:
    if tensor.shape[0] != sum(rows):
        if role == UP and UP not in item.group.tensors:
            role = EMBEDDING_A  # PEFT embedding factors: their A carries the rows
        raise LoraError(
            f"Tensor {item.group.key(role)} has {tensor.shape[0]} output rows, but this FLUX.1 model's "
            f"{item.group.module} has {sum(rows)}: the LoRA was made for a model of another size."
        )


def _down_key(group: _Group) -> str:
    return group.key(DOWN) if DOWN in group.tensors else group.key(EMBEDDING_B)


def _own_columns(down: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The part of a fused layer's LoRA that one of its parts uses: a block-diagonal up matrix (kohya's split_qkv)
    gives each part zero columns outside its own rank block, and dropping them changes nothing."""
    used = (up.float().abs().sum(dim=0) > 0).nonzero().squeeze(1)  # the fastest on CPU for bf16/fp16 tensors
    if len(used) in (0, up.shape[1]):
        return down, up
    # index_select, not a boolean mask: masked indexing is two orders of magnitude slower here.
    return down.index_select(0, used), up.index_select(1, used)


def _state_dict(updates: dict[tuple[str, str], _Update], targets: LoraTargets) -> dict[str, torch.Tensor]:
    with_bias = {component for (component, _), update in updates.items() if update.bias is not None}
    state_dict = {}
    for (component, name), update in sorted(updates.items()):
        layer = targets.layer(component, name)
        down, up = _joined(update, layer.rows, layer.cols)
        prefix = f"{component}.{name}"
        if layer.embedding:
            state_dict[f"{prefix}.lora_embedding_A"] = up.T.contiguous()
            state_dict[f"{prefix}.lora_embedding_B"] = down.T.contiguous()
            continue
        state_dict[f"{prefix}.lora_A.weight"] = down
        state_dict[f"{prefix}.lora_B.weight"] = up
        if component in with_bias:  # peft's lora_bias is per adapter: every layer of it needs one
            state_dict[f"{prefix}.lora_B.bias"] = update.bias if update.bias is not None else torch.zeros(layer.rows)
    return state_dict


def _joined(update: _Update, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One (down, up) pair for the layer; a layer with only a bias change gets a rank-1 zero pair."""
    if not update.downs:
        return torch.zeros(1, cols), torch.zeros(rows, 1)
    if len(update.downs) == 1:
        return update.downs[0], update.ups[0]
    dtype = torch.promote_types(update.downs[0].dtype, torch.float32)
    down = torch.cat([down.to(dtype) for down in update.downs])
    up = torch.cat([up.to(dtype) for up in update.ups], dim=1)
    return down, up


def _layer_of(key: str) -> str:
    for suffix in (".lora_A.weight", ".lora_B.weight", ".lora_B.bias", ".lora_embedding_A", ".lora_embedding_B"):
        if key.endswith(suffix):
            return key.removesuffix(suffix)
    return key


def _sample(keys: Iterable[str], count: int = 3) -> str:
    keys = sorted(set(keys))
    shown = ", ".join(keys[:count])
    return shown + (", …" if len(keys) > count else "")
