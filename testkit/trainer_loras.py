"""LoRA files laid out the way the public FLUX trainers write them, at any model size, with what each one means.

Each generator below reproduces one trainer's output from that trainer's public source (cited in its docstring;
we read the sources and wrote these from what they do, copying no code): its key names, which layers it trains
by default, how it writes fused layers, its alpha rule and the dtype it saves in. Writing a file also records,
independently of `lora_loader`, what the file means for every live layer ("<component>.<layer>"): its weight
change as low-rank factors (ΔW = Σ scale · up @ down, from the tensors exactly as saved) and its bias change.
"What it means" is the plain LoRA maths every loader applies (kohya's, ComfyUI's, diffusers'): ΔW = alpha / rank ·
up @ down, with rank the file's rank; a fused BFL layer's output rows split over its diffusers layers in BFL's
order (q, k, v[, mlp]); the final layer's modulation halves swap.

Shapes come from the live modules (`Shapes.of(pipe)`), so one generator writes FLUX.1-size files
(testkit.flux1_models) and files for the reduced or tiny models alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from lora_loader import formats
from testkit.lora_fixtures import BFL_DOUBLE, BFL_SINGLE, BFL_TOP, SWAPPED, linear_shapes

TRANSFORMER, CLIP, T5 = "transformer", "text_encoder", "text_encoder_2"


@dataclass(frozen=True)
class Shapes:
    """Weight shapes (rows, cols) of the layers a LoRA can change, by live name: every Linear layer of the
    transformer, CLIP and T5, and CLIP's embeddings (rows = tokens)."""

    transformer: dict[str, tuple[int, int]]
    clip: dict[str, tuple[int, int]]
    clip_embeddings: dict[str, tuple[int, int]]
    t5: dict[str, tuple[int, int]]

    @classmethod
    def of(cls, pipe) -> Shapes:
        embeddings = {
            name: tuple(module.weight.shape)
            for name, module in pipe.text_encoder.named_modules()
            if isinstance(module, torch.nn.Embedding)
        }
        return cls(
            linear_shapes(pipe.transformer), linear_shapes(pipe.text_encoder), embeddings,
            linear_shapes(pipe.text_encoder_2),
        )  # fmt: skip

    def component(self, component: str) -> dict[str, tuple[int, int]]:
        return {TRANSFORMER: self.transformer, CLIP: self.clip | self.clip_embeddings, T5: self.t5}[component]

    def blocks(self, prefix: str) -> list[int]:
        return sorted({int(name.split(".")[1]) for name in self.transformer if name.startswith(prefix + ".")})


@dataclass
class Meaning:
    """What a file means for one live layer: ΔW = Σ scale · up @ down over its terms, and a bias change."""

    terms: list[tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=list)  # (up, down, scale)
    bias: torch.Tensor | None = None

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, V) in float64 with ΔW = U @ V."""
        ups = [up.double() for up, _, _ in self.terms]
        downs = [scale * down.double() for _, down, scale in self.terms]
        return torch.cat(ups, dim=1), torch.cat(downs)


@dataclass(frozen=True)
class TrainerLora:
    path: Path
    format: str  # what lora_loader.formats must report
    expected: dict[str, Meaning]  # "<component>.<live layer>" -> what the file means for it
    layers: dict[str, int]  # how many layers of each component the trainer trains here


class Writer:
    """Collects one file's tensors, in the trainer's dtype, and what each of them means."""

    def __init__(self, shapes: Shapes, rank: int, seed: int):
        self.shapes, self.rank = shapes, rank
        self.generator = torch.Generator().manual_seed(seed)
        self.dtype = torch.bfloat16
        self.tensors: dict[str, torch.Tensor] = {}
        self.metadata: dict[str, str] = {}
        self.expected: dict[str, Meaning] = {}

    def random(self, *shape: int, fan_in: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=self.generator) / fan_in**0.5).to(self.dtype)

    def save(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        self.tensors[key] = tensor.to(self.dtype).contiguous()
        return self.tensors[key]

    def layer(
        self, keys: LayerKeys, targets: list[tuple[str, str]], *, alpha: float | None = None, swap: bool = False,
        bias: bool = False, fused: str = "dense",
    ) -> None:  # fmt: skip
        """One file layer landing on `targets` ((component, live name), rows in that order).

        fused: "dense" (one down, one up over all rows), or "block" (one LoRA per target, stored as kohya's
        split_qkv stores fused layers: downs stacked, up block-diagonal, file rank = parts × rank, alpha kept)."""
        shapes = [self.shapes.component(component)[name] for component, name in targets]
        rows, cols = [rows for rows, _ in shapes], shapes[0][1]
        if fused == "block":
            downs = [self.random(self.rank, cols, fan_in=cols) for _ in targets]
            ups = [self.random(part, self.rank, fan_in=self.rank) for part in rows]
            down, up = torch.cat(downs), torch.block_diag(*ups)
        else:
            down, up = self.random(self.rank, cols, fan_in=cols), self.random(sum(rows), self.rank, fan_in=self.rank)
        down, up = self.save(keys.down, down), self.save(keys.up, up)
        if alpha is not None:
            alpha = float(self.save(keys.alpha, torch.tensor(alpha)).float())
        scale = 1.0 if alpha is None else alpha / down.shape[0]
        self._expect(targets, rows, up, down, scale, swap)
        if bias:
            self._expect_bias(targets, rows, self.save(keys.bias, self.random(sum(rows), fan_in=1)), swap)

    def _expect(self, targets, rows, up, down, scale, swap) -> None:
        if swap:  # BFL's (shift, scale) halves are diffusers' (scale, shift)
            up = torch.cat(up.chunk(2)[::-1])
        for (component, name), part in zip(targets, up.split(rows), strict=True):
            self.expected.setdefault(f"{component}.{name}", Meaning()).terms.append((part, down, scale))

    def _expect_bias(self, targets, rows, bias, swap) -> None:
        if swap:
            bias = torch.cat(bias.chunk(2)[::-1])
        for (component, name), part in zip(targets, bias.split(rows), strict=True):
            self.expected.setdefault(f"{component}.{name}", Meaning()).bias = part

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for layer in self.expected:
            component = layer.split(".")[0]
            found[component] = found.get(component, 0) + 1
        return found


@dataclass(frozen=True)
class LayerKeys:
    down: str
    up: str
    alpha: str = ""
    bias: str = ""

    @classmethod
    def of(cls, module: str, style: str) -> LayerKeys:
        down, up = {
            "kohya": (".lora_down.weight", ".lora_up.weight"),
            "peft": (".lora_A.weight", ".lora_B.weight"),
            "xlabs": (".down.weight", ".up.weight"),
        }[style]
        return cls(module + down, module + up, module + ".alpha", module + ".diff_b")


# The layers of FLUX by BFL name: (BFL name, [(component, diffusers layer)], swap halves).


def bfl_blocks(shapes: Shapes) -> Iterator[tuple[str, list[tuple[str, str]], bool]]:
    """Every Linear layer of FLUX's double and single blocks, as BFL names them (fused layers whole)."""
    for block in shapes.blocks("transformer_blocks"):
        for bfl, parts in BFL_DOUBLE.items():
            targets = [(TRANSFORMER, f"transformer_blocks.{block}.{p}") for p in parts]
            yield f"double_blocks.{block}.{bfl}", targets, False
    for block in shapes.blocks("single_transformer_blocks"):
        for bfl, parts in BFL_SINGLE.items():
            targets = [(TRANSFORMER, f"single_transformer_blocks.{block}.{p}") for p in parts]
            yield f"single_blocks.{block}.{bfl}", targets, False


def bfl_top(shapes: Shapes, names: tuple[str, ...] = tuple(BFL_TOP)) -> Iterator[tuple[str, list, bool]]:
    """FLUX's layers outside the blocks, by BFL name (guidance_in only where the model has it: dev)."""
    for bfl in names:
        if BFL_TOP[bfl] in shapes.transformer:
            yield bfl, [(TRANSFORMER, BFL_TOP[bfl])], bfl == SWAPPED


def diffusers_layers(shapes: Shapes, keep: Callable[[str], bool] = lambda name: True) -> Iterator[str]:
    return (name for name in sorted(shapes.transformer) if keep(name))


def clip_file_name(live: str) -> str:
    """CLIP layer names as trainers on transformers 4 write them (transformers 5 dropped the `text_model.` level)."""
    return live if live.startswith("text_model.") else "text_model." + live


def flat(name: str) -> str:
    return name.replace(".", "_")


def text_encoders(w: Writer, clip_key: Callable[[str], str], t5_key: Callable[[str], str], style: str,
                  alpha: float | None) -> None:  # fmt: skip
    """Every Linear layer of CLIP-L and T5-XXL: what kohya's train_t5xxl and OneTrainer's text-encoder training
    cover (CLIP attention + MLP; T5 attention q/k/v/o + gated MLP wi_0/wi_1/wo)."""
    for live in sorted(w.shapes.clip):
        w.layer(LayerKeys.of(clip_key(clip_file_name(live)), style), [(CLIP, live)], alpha=alpha)
    for live in sorted(w.shapes.t5):
        w.layer(LayerKeys.of(t5_key(live), style), [(T5, live)], alpha=alpha)


# The trainers. Each fills a Writer and returns the format lora_loader must report.


def ai_toolkit(w: Writer) -> str:
    """ostris/ai-toolkit, as Replicate's FLUX trainer runs it (`toolkit/lora_special.py`, `network_mixins.py`):
    `transformer_only` trains every Linear layer whose name holds `transformer_blocks` (both block kinds), the
    FLUX save is PEFT-format (`transformer.<layer>.lora_A/lora_B`, `.alpha` dropped: ΔW = B @ A), fp16."""
    w.dtype = torch.float16
    for name in diffusers_layers(w.shapes, lambda name: "transformer_blocks" in name):
        w.layer(LayerKeys.of(f"transformer.{name}", "peft"), [(TRANSFORMER, name)])
    return formats.DIFFUSERS


def kohya(w: Writer) -> str:
    """kohya-ss/sd-scripts `networks/lora_flux.py` with `train_t5xxl=True` and `in_dims` for all five input
    layers, the text encoder trained too: `lora_unet_` + BFL names flattened for every Linear of DoubleStreamBlock
    and SingleStreamBlock (qkv and linear1 fused, one LoRA each), img_in/time_in/vector_in/guidance_in/txt_in,
    `lora_te1_` CLIP attention + MLP, `lora_te3_` T5 attention + gated MLP; `.alpha` = network_alpha (default 1);
    bf16 (save_precision)."""
    for bfl, targets, swap in [*bfl_blocks(w.shapes), *bfl_top(w.shapes, KOHYA_IN_DIMS)]:
        w.layer(LayerKeys.of("lora_unet_" + flat(bfl), "kohya"), targets, alpha=1.0, swap=swap)
    text_encoders(w, lambda name: "lora_te1_" + flat(name), lambda name: "lora_te3_" + flat(name), "kohya", 1.0)
    return formats.KOHYA


KOHYA_IN_DIMS = ("img_in", "time_in.in_layer", "time_in.out_layer", "vector_in.in_layer", "vector_in.out_layer",
                 "guidance_in.in_layer", "guidance_in.out_layer", "txt_in")  # fmt: skip


def kohya_split_qkv(w: Writer) -> str:
    """sd-scripts with `split_qkv=True`, fp16: fused layers are trained as separate q/k/v(/mlp) LoRAs and saved
    merged (`LoRANetwork.state_dict`): downs stacked (rank × parts), up block-diagonal, alpha unchanged, so by the
    file's own rank each part's scale is alpha / (parts × rank), the same as kohya's loader reads it."""
    w.dtype = torch.float16
    for bfl, targets, swap in bfl_blocks(w.shapes):
        fused = "block" if len(targets) > 1 else "dense"
        w.layer(LayerKeys.of("lora_unet_" + flat(bfl), "kohya"), targets, alpha=4.0, swap=swap, fused=fused)
    return formats.KOHYA


def comfyui(w: Writer) -> str:
    """ComfyUI's Train LoRA node (`comfy_extras/nodes_train.py`, `comfy/weight_adapter/lora.py`) saved by its
    Save LoRA node: every module with a weight function in the diffusion model (every Linear of FLUX, in BFL
    names) gets `lora_up`/`lora_down`/`alpha` (1.0), and every bias a `diff_b`, all `diffusion_model.` + the
    module name, bf16. ComfyUI adds diff_b to the bias times the strength."""
    for bfl, targets, swap in [*bfl_blocks(w.shapes), *bfl_top(w.shapes)]:
        w.layer(LayerKeys.of("diffusion_model." + bfl, "kohya"), targets, alpha=1.0, swap=swap, bias=True)
    return formats.COMFYUI


def _onetrainer(w: Writer, key: Callable[[str], str], style: str) -> None:
    """OneTrainer's "full" preset (every Linear of the transformer) in BFL names. For the formats with BFL's fused
    layers it trains one adapter over each fused q/k/v(/mlp) group (`ModelFormat.needs_qkv_fusion`,
    `modules/module/FusedModule.py`), renamed on save by `FluxModel.diffusers_to_original`, whose chunk_swap
    swaps the final modulation's lora_up halves; alpha 1 per layer."""
    for bfl, targets, swap in [*bfl_blocks(w.shapes), *bfl_top(w.shapes)]:
        w.layer(LayerKeys.of(key(bfl), style), targets, alpha=1.0, swap=swap)


def onetrainer_comfy(w: Writer) -> str:
    """OneTrainer, LoRA output format "ComfyUI" (`modules/util/convert_lora_util.py`, `FluxModel.py`): the
    transformer in BFL names under `diffusion_model.` with PEFT suffixes `lora_A`/`lora_B` and `.alpha` kept, the
    text encoders under ComfyUI's names `text_encoders.clip_l.transformer.` / `text_encoders.t5xxl.transformer.`."""
    _onetrainer(w, lambda bfl: "diffusion_model." + bfl, "peft")
    clip, t5 = "text_encoders.clip_l.transformer.", "text_encoders.t5xxl.transformer."
    text_encoders(w, lambda name: clip + name, lambda name: t5 + name, "peft", 1.0)
    return formats.BFL_PEFT


def onetrainer_kohya(w: Writer) -> str:
    """OneTrainer, LoRA output format "kohya": `lora_unet_` + flattened BFL names, `lora_te1_` CLIP and
    `lora_te2_` T5 (OneTrainer's kohya name for FLUX's second text encoder), lora_down/lora_up/alpha, fp16."""
    w.dtype = torch.float16
    _onetrainer(w, lambda bfl: "lora_unet_" + flat(bfl), "kohya")
    text_encoders(w, lambda name: "lora_te1_" + flat(name), lambda name: "lora_te2_" + flat(name), "kohya", 1.0)
    return formats.KOHYA


def onetrainer_legacy(w: Writer) -> str:
    """OneTrainer, LoRA output format "legacy" (the "mixture" conversion, `convert_to_mixture`): diffusers layer
    names flattened under `lora_transformer_`, `lora_te1_` CLIP, `lora_te2_` T5, nothing fused."""
    for name in diffusers_layers(w.shapes):
        w.layer(LayerKeys.of("lora_transformer_" + flat(name), "kohya"), [(TRANSFORMER, name)], alpha=1.0)
    text_encoders(w, lambda name: "lora_te1_" + flat(name), lambda name: "lora_te2_" + flat(name), "kohya", 1.0)
    return formats.MIXTURE


def onetrainer_diffusers(w: Writer) -> str:
    """OneTrainer, LoRA output format "diffusers" (`convert_lora_suffix_ab` with the PEFT convention): diffusers
    names under `transformer.`, `text_encoder.`, `text_encoder_2.`, alpha folded into lora_B and dropped."""
    for name in diffusers_layers(w.shapes):
        w.layer(LayerKeys.of("transformer." + name, "peft"), [(TRANSFORMER, name)])
    text_encoders(w, lambda name: "text_encoder." + name, lambda name: "text_encoder_2." + name, "peft", None)
    return formats.DIFFUSERS


def onetrainer_omi(w: Writer) -> str:
    """OneTrainer's OMI layout (`modules/util/convert/lora/convert_flux_lora.py` before the format rework):
    `transformer.` + BFL names with each part of a fused layer as its own LoRA (`img_attn.qkv.0/1/2`,
    `linear1.0..3`), `img_in.proj` for img_in, the final modulation's lora_up halves swapped; `clip_l.` and `t5.`
    text encoders; lora_down/lora_up/alpha."""
    for bfl, targets, swap in [*bfl_blocks(w.shapes), *bfl_top(w.shapes)]:
        parts = [f"{bfl}.{index}" for index in range(len(targets))] if len(targets) > 1 else [bfl]
        for part, target in zip(parts, targets, strict=True):
            name = "img_in.proj" if part == "img_in" else part
            w.layer(LayerKeys.of("transformer." + name, "kohya"), [target], alpha=1.0, swap=swap)
    text_encoders(w, lambda name: "clip_l." + name, lambda name: "t5." + name, "kohya", 1.0)
    return formats.OMI


def xlabs(w: Writer) -> str:
    """XLabs-AI/x-flux `train_flux_lora_deepspeed.py` + `src/flux/modules/layers.py`: every double block gets a
    DoubleStreamBlockLoraProcessor (qkv_lora1/proj_lora1 image stream, qkv_lora2/proj_lora2 text stream), every
    single block a SingleStreamBlockLoraProcessor (qkv_lora on linear1's q/k/v rows, proj_lora on linear2);
    LoRALinearLayer `down`/`up`, network_alpha None (scale 1); saved from the bf16 model's state dict."""
    for block in w.shapes.blocks("transformer_blocks"):
        d = f"transformer_blocks.{block}.attn"
        for stream, qkv, proj in (("1", ("to_q", "to_k", "to_v"), "to_out.0"),
                                  ("2", ("add_q_proj", "add_k_proj", "add_v_proj"), "to_add_out")):  # fmt: skip
            processor = f"double_blocks.{block}.processor"
            w.layer(LayerKeys.of(f"{processor}.qkv_lora{stream}", "xlabs"), [(TRANSFORMER, f"{d}.{n}") for n in qkv])
            w.layer(LayerKeys.of(f"{processor}.proj_lora{stream}", "xlabs"), [(TRANSFORMER, f"{d}.{proj}")])
    for block in w.shapes.blocks("single_transformer_blocks"):
        s, processor = f"single_transformer_blocks.{block}", f"single_blocks.{block}.processor"
        qkv = [(TRANSFORMER, f"{s}.attn.{n}") for n in ("to_q", "to_k", "to_v")]
        w.layer(LayerKeys.of(f"{processor}.qkv_lora", "xlabs"), qkv)
        w.layer(LayerKeys.of(f"{processor}.proj_lora", "xlabs"), [(TRANSFORMER, f"{s}.proj_out")])
    return formats.XLABS


def simpletuner_lycoris(w: Writer) -> str:
    """SimpleTuner with `lora_type=lycoris` and a LyCORIS config of algo `lora` on its documented preset
    (`target_module: ["Attention", "FeedForward"]`): LyCORIS (`lycoris/wrapper.py`) names each Linear under those
    modules `lycoris_` + its path with dots as underscores, with lora_down/lora_up/alpha (linear_alpha 1), bf16.
    In diffusers' FLUX that is each block's attention (q/k/v/out and the added q/k/v/out; single blocks: q/k/v)
    and feed-forward layers."""
    attention = (".attn.to_", ".attn.add_")
    feed_forward = (".ff.net.", ".ff_context.net.")
    for name in diffusers_layers(w.shapes, lambda name: any(part in name for part in attention + feed_forward)):
        w.layer(LayerKeys.of("lycoris_" + flat(name), "kohya"), [(TRANSFORMER, name)], alpha=1.0)
    return formats.LYCORIS


def peft_raw(w: Writer) -> str:
    """A raw PEFT save of the transformer (`get_peft_model_state_dict` keys under `base_model.model.`) on every
    Linear layer, float32: what scripts that wrap the transformer with peft themselves write."""
    w.dtype = torch.float32
    for name in diffusers_layers(w.shapes):
        w.layer(LayerKeys.of("base_model.model." + name, "peft"), [(TRANSFORMER, name)])
    return formats.PEFT_WITHOUT_PREFIX


def comfy_text_encoder_names(w: Writer) -> str:
    """ComfyUI's generic key names (`comfy/lora.py`: `text_encoders.<any text-encoder weight>`, and
    `diffusion_model.<any weight>`), which reach CLIP's token and position embeddings too: ΔW = up @ down in the
    weight's own shape (tokens × width). No FLUX trainer we know writes embedding LoRAs; the layout follows
    ComfyUI's loader, which applies them. With a few transformer layers, every CLIP and T5 layer."""
    for bfl, targets, swap in list(bfl_blocks(w.shapes))[:3]:
        w.layer(LayerKeys.of("diffusion_model." + bfl, "kohya"), targets, alpha=2.0, swap=swap)
    clip, t5 = "text_encoders.clip_l.transformer.", "text_encoders.t5xxl.transformer."
    text_encoders(w, lambda name: clip + name, lambda name: t5 + name, "kohya", 2.0)
    for live in sorted(w.shapes.clip_embeddings):
        w.layer(LayerKeys.of(clip + clip_file_name(live), "kohya"), [(CLIP, live)], alpha=2.0)
    return formats.COMFYUI


TRAINERS: dict[str, Callable[[Writer], str]] = {
    "ai_toolkit": ai_toolkit,
    "kohya": kohya,
    "kohya_split_qkv": kohya_split_qkv,
    "comfyui": comfyui,
    "onetrainer_comfy": onetrainer_comfy,
    "onetrainer_kohya": onetrainer_kohya,
    "onetrainer_legacy": onetrainer_legacy,
    "onetrainer_diffusers": onetrainer_diffusers,
    "onetrainer_omi": onetrainer_omi,
    "xlabs": xlabs,
    "simpletuner_lycoris": simpletuner_lycoris,
    "peft_raw": peft_raw,
    "comfy_text_encoder_names": comfy_text_encoder_names,
}


def write(name: str, folder: Path, shapes: Shapes, rank: int = 4, seed: int = 0) -> TrainerLora:
    """Write trainer `name`'s file for a model of these shapes into `folder`."""
    writer = Writer(shapes, rank, seed)
    fmt = TRAINERS[name](writer)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_file(writer.tensors, path, metadata={"format": "pt", **writer.metadata})
    return TrainerLora(path, fmt, writer.expected, writer.counts())
