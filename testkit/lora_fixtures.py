"""Small seeded LoRA files for the tiny FLUX model, in every format the server reads, each with its expected ΔW.

Nothing here is committed as a binary: tests write the files into a tmp folder at session start. Each writer
returns a `LoraFixture` whose `expected` maps a layer ("transformer.<diffusers module>" or
"text_encoder.<CLIP module>") to the change ΔW that the file must make to that layer's weight at adapter
weight 1. The expectations are written out by hand from each format's definition (BFL's fused layers, kohya's
alpha, the order of the final layer's modulation), independently of `lora_loader.formats`, so a test that
compares them with what peft attached checks the conversion numerically, not just that a file loads.

The layer shapes come from the live modules (`linear_shapes`), so the same writers fit dev and schnell.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file

from lora_loader import formats

RANK = 4

# BFL layer (block 0 of the tiny model) -> the diffusers layers its output rows are split over, in order.
# Written out again on purpose rather than imported from lora_loader.targets: these fixtures state independently
# what a trainer's file means, so a mistake in the product's table cannot make its own tests pass.
BFL_DOUBLE = {
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
BFL_SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.lin": ("norm.linear",),
}
BFL_TOP = {
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
SWAPPED = "final_layer.adaLN_modulation.1"  # BFL emits (shift, scale); diffusers' norm_out emits (scale, shift)


def bfl_layers(blocks_only: bool = False, with_linear1: bool = True) -> dict[str, tuple[str, ...]]:
    """BFL name -> full diffusers names, for the tiny model's one double and one single block."""
    layers = {f"double_blocks.0.{k}": tuple(f"transformer_blocks.0.{n}" for n in v) for k, v in BFL_DOUBLE.items()}
    for key, names in BFL_SINGLE.items():
        if with_linear1 or key != "linear1":
            layers[f"single_blocks.0.{key}"] = tuple(f"single_transformer_blocks.0.{n}" for n in names)
    if not blocks_only:
        layers |= {key: (name,) for key, name in BFL_TOP.items()}
    return layers


CLIP_LAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


@dataclass(frozen=True)
class LoraFixture:
    path: Path
    format: str  # what lora_loader.formats must report
    expected: dict[str, torch.Tensor]  # layer -> ΔW at adapter weight 1


def linear_shapes(module: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """(out_features, in_features) of every Linear layer, by name (peft wrappers unwrapped)."""
    shapes = {}
    for name, child in module.named_modules():
        if isinstance(child, torch.nn.Linear) and not name.endswith(("lora_A", "lora_B")) and ".lora_" not in name:
            shapes[name.removesuffix(".base_layer")] = tuple(child.weight.shape)
    return shapes


def attached_deltas(pipe, adapter: str) -> dict[str, torch.Tensor]:
    """ΔW of every layer carrying `adapter` (Linear or embedding), by "component.layer" (CLIP names without
    `text_model.`), on the transformer, CLIP and T5."""
    deltas = {}
    for component in ("transformer", "text_encoder", "text_encoder_2"):
        for name, module in getattr(pipe, component).named_modules():
            if isinstance(module, LoraLayer) and (adapter in module.lora_A or adapter in module.lora_embedding_A):
                deltas[f"{component}.{name.removeprefix('text_model.')}"] = module.get_delta_weight(adapter).detach()
    return deltas


class LoraWriter:
    """Collects one file's tensors and the ΔW each of its layers must cause."""

    def __init__(self, seed: int, transformer: dict, text_encoder: dict | None = None, dtype=torch.float32):
        self.generator = torch.Generator().manual_seed(seed)
        self.transformer = transformer
        self.text_encoder = text_encoder or {}
        self.dtype = dtype
        self.tensors: dict[str, torch.Tensor] = {}
        self.expected: dict[str, torch.Tensor] = {}

    def factors(self, out_features: int, in_features: int, rank: int = RANK) -> tuple[torch.Tensor, torch.Tensor]:
        down = torch.randn(rank, in_features, generator=self.generator) / in_features**0.5
        up = torch.randn(out_features, rank, generator=self.generator) / rank**0.5
        return down.to(self.dtype), up.to(self.dtype)

    def layer(self, down_key: str, up_key: str, targets: tuple[str, ...], *, alpha: float | None = None,
              alpha_key: str | None = None, swap_halves: bool = False, block_diagonal: bool = False,
              shapes: dict | None = None, component: str = "transformer") -> None:  # fmt: skip
        """One file layer (possibly fused over several `targets`), and the ΔW it makes on each target."""
        shapes = self.transformer if shapes is None else shapes
        rows = [shapes[name][0] for name in targets]
        in_features = shapes[targets[0]][1]
        rank = RANK * len(targets) if block_diagonal else RANK
        down, up = self.factors(sum(rows), in_features, rank)
        if block_diagonal:  # kohya's "sparse" fused layers: each target uses its own slice of the rank
            mask = torch.block_diag(*[torch.ones(r, RANK) for r in rows]).to(up.dtype)
            up = up * mask
        self.tensors[down_key], self.tensors[up_key] = down, up
        if alpha is not None:
            self.tensors[alpha_key] = torch.tensor(alpha)
        scale = 1.0 if alpha is None else alpha / rank
        delta = scale * (up.double() @ down.double())
        if swap_halves:
            delta = torch.cat(delta.chunk(2)[::-1])
        for name, part in zip(targets, delta.split(rows), strict=True):
            self.expected[f"{component}.{name}"] = part.float()

    def save(self, path: Path, fmt: str, metadata: dict[str, str] | None = None) -> LoraFixture:
        save_file(self.tensors, path, metadata={"format": "pt", **(metadata or {})})
        return LoraFixture(path, fmt, self.expected)


# One writer per format. Each takes (writer) and fills it; `write_fixture` saves it.


def diffusers_peft(w: LoraWriter) -> str:
    """diffusers' own layout, with `.alpha` on every other layer, and non-block layers too."""
    layers = ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_out.0", "transformer_blocks.0.ff.net.2")
    layers += ("single_transformer_blocks.0.proj_out", "x_embedder", "proj_out", "context_embedder")
    for index, name in enumerate(layers):
        alpha = 2.0 if index % 2 else None
        key = f"transformer.{name}"
        w.layer(f"{key}.lora_A.weight", f"{key}.lora_B.weight", (name,), alpha=alpha, alpha_key=f"{key}.alpha")
    return formats.DIFFUSERS


def diffusers_with_metadata(w: LoraWriter) -> tuple[str, dict[str, str]]:
    """diffusers >= 0.34 writes the LoraConfig in the header: lora_alpha 8 (scale 2), one layer 2 by pattern."""
    for name, alpha in (("transformer_blocks.0.attn.to_k", 8.0), ("single_transformer_blocks.0.attn.to_v", 2.0)):
        key = f"transformer.{name}"
        w.layer(f"{key}.lora_A.weight", f"{key}.lora_B.weight", (name,))
        w.expected[key] *= alpha / RANK
    # A CLIP MLP layer alone, in PEFT naming: diffusers' CLIP loader cannot infer that layout by itself.
    key = "text_encoder.text_model.encoder.layers.1.mlp.fc1"
    w.layer(f"{key}.lora_A.weight", f"{key}.lora_B.weight", ("encoder.layers.1.mlp.fc1",), shapes=w.text_encoder,
            component="text_encoder")  # fmt: skip
    config = {
        "transformer.r": RANK,
        "transformer.lora_alpha": 8,
        "transformer.alpha_pattern": {"single_transformer_blocks.0.attn.to_v": 2},
    }
    return formats.DIFFUSERS, {"lora_adapter_metadata": json.dumps(config)}


def ai_toolkit(w: LoraWriter) -> str:
    """What Replicate's trainer writes: every Linear layer of the blocks, fp16, no alpha."""
    w.dtype = torch.float16
    for name in w.transformer:
        if name.startswith(("transformer_blocks.", "single_transformer_blocks.")):
            key = f"transformer.{name}"
            w.layer(f"{key}.lora_A.weight", f"{key}.lora_B.weight", (name,))
    return formats.DIFFUSERS


def peft_without_prefix(w: LoraWriter) -> str:
    for name in ("transformer_blocks.0.attn.to_v", "single_transformer_blocks.0.proj_mlp", "norm_out.linear"):
        w.layer(f"{name}.lora_A.weight", f"{name}.lora_B.weight", (name,))
    return formats.PEFT_WITHOUT_PREFIX


def peft_base_model(w: LoraWriter) -> str:
    """A raw PEFT save (`base_model.model.` prefix), which diffusers mistakes for a fal Kontext LoRA."""
    for name in ("transformer_blocks.0.attn.add_k_proj", "single_transformer_blocks.0.norm.linear"):
        key = f"base_model.model.{name}"
        w.layer(f"{key}.lora_A.weight", f"{key}.lora_B.weight", (name,))
    return formats.PEFT_WITHOUT_PREFIX


def _bfl_file(w: LoraWriter, key: Callable[[str], str], down: str, up: str, layers: dict, alpha=None) -> None:
    for index, (bfl, targets) in enumerate(layers.items()):
        layer_alpha = alpha(index) if callable(alpha) else alpha
        w.layer(
            key(bfl) + down,
            key(bfl) + up,
            targets,
            alpha=layer_alpha,
            alpha_key=key(bfl) + ".alpha",
            swap_halves=bfl == SWAPPED,
            block_diagonal=bfl == "double_blocks.0.txt_attn.qkv",
        )


def kohya(w: LoraWriter) -> str:
    """sd-scripts, block layers only and no linear1: the file diffusers' own converter gets right."""
    layers = bfl_layers(blocks_only=True, with_linear1=False)
    _bfl_file(w, _kohya_name, ".lora_down.weight", ".lora_up.weight", layers, alpha=lambda i: float(i % 3 + 1))
    return formats.KOHYA


def kohya_all_layers(w: LoraWriter) -> str:
    """sd-scripts on every layer, with linear1 and the non-block layers diffusers drops: our converter."""
    layers = bfl_layers()
    if "time_text_embed.guidance_embedder.linear_1" not in w.transformer:  # schnell
        layers = {k: v for k, v in layers.items() if not k.startswith("guidance_in")}
    _bfl_file(w, _kohya_name, ".lora_down.weight", ".lora_up.weight", layers, alpha=lambda i: float(i % 5 + 1))
    return formats.KOHYA


def kohya_text_encoder(w: LoraWriter) -> str:
    """sd-scripts with CLIP layers (`lora_te1_`), plus a T5 layer in OneTrainer's kohya naming (`lora_te2_`)."""
    kohya(w)
    for layer, name in enumerate(CLIP_LAYERS):
        flat = f"lora_te1_text_model_encoder_layers_{layer % 2}_{name.replace('.', '_')}"
        target = f"encoder.layers.{layer % 2}.{name}"
        w.layer(f"{flat}.lora_down.weight", f"{flat}.lora_up.weight", (target,), alpha=2.0, alpha_key=f"{flat}.alpha",
                shapes=w.text_encoder, component="text_encoder")  # fmt: skip
    t5 = "lora_te2_encoder_block_0_layer_0_SelfAttention_q"
    target = "encoder.block.0.layer.0.SelfAttention.q"  # the tiny T5: d_model 32, 4 heads × d_kv 8
    w.layer(f"{t5}.lora_down.weight", f"{t5}.lora_up.weight", (target,), alpha=8.0, alpha_key=f"{t5}.alpha",
            shapes={target: (32, 32)}, component="text_encoder_2")  # fmt: skip
    return formats.KOHYA


def comfyui(w: LoraWriter) -> str:
    layers = bfl_layers(blocks_only=True, with_linear1=False)
    _bfl_file(w, lambda bfl: f"diffusion_model.{bfl}", ".lora_down.weight", ".lora_up.weight", layers, alpha=8.0)
    clip = "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.v_proj"
    w.layer(f"{clip}.lora_down.weight", f"{clip}.lora_up.weight", ("encoder.layers.0.self_attn.v_proj",), alpha=8.0,
            alpha_key=f"{clip}.alpha", shapes=w.text_encoder, component="text_encoder")  # fmt: skip
    return formats.COMFYUI


def bfl_peft(w: LoraWriter) -> str:
    """BFL names with PEFT tensors (diffusers drops these silently), linear1 and non-block layers included."""
    layers = bfl_layers()
    if "time_text_embed.guidance_embedder.linear_1" not in w.transformer:
        layers = {k: v for k, v in layers.items() if not k.startswith("guidance_in")}
    _bfl_file(w, lambda bfl: f"diffusion_model.{bfl}", ".lora_A.weight", ".lora_B.weight", layers)
    return formats.BFL_PEFT


def mixture(w: LoraWriter) -> str:
    """`lora_transformer_` + diffusers names with underscores; alpha on some layers only (diffusers needs all)."""
    names = (
        "transformer_blocks.0.attn.to_q",
        "transformer_blocks.0.ff.net.0.proj",
        "transformer_blocks.0.norm1.linear",
    )
    names += ("single_transformer_blocks.0.proj_out", "single_transformer_blocks.0.attn.to_k", "x_embedder", "proj_out")
    for index, name in enumerate(names):
        flat = "lora_transformer_" + name.replace(".", "_")
        alpha = 2.0 if index % 2 else None
        w.layer(f"{flat}.lora_down.weight", f"{flat}.lora_up.weight", (name,), alpha=alpha, alpha_key=f"{flat}.alpha")
    flat = "lora_te1_text_model_encoder_layers_1_mlp_fc2"
    w.layer(f"{flat}.lora_down.weight", f"{flat}.lora_up.weight", ("encoder.layers.1.mlp.fc2",), alpha=1.0,
            alpha_key=f"{flat}.alpha", shapes=w.text_encoder, component="text_encoder")  # fmt: skip
    return formats.MIXTURE


def xlabs(w: LoraWriter) -> str:
    double = "transformer_blocks.0.attn"
    single = "single_transformer_blocks.0"
    layers = {
        "double_blocks.0.processor.qkv_lora1": (f"{double}.to_q", f"{double}.to_k", f"{double}.to_v"),
        "double_blocks.0.processor.proj_lora1": (f"{double}.to_out.0",),
        "double_blocks.0.processor.qkv_lora2": (f"{double}.add_q_proj", f"{double}.add_k_proj", f"{double}.add_v_proj"),
        "double_blocks.0.processor.proj_lora2": (f"{double}.to_add_out",),
        "single_blocks.0.processor.qkv_lora": (f"{single}.attn.to_q", f"{single}.attn.to_k", f"{single}.attn.to_v"),
        "single_blocks.0.processor.proj_lora": (f"{single}.proj_out",),  # XLabs: in = attention + MLP width
    }
    for key, targets in layers.items():
        w.layer(f"{key}.down.weight", f"{key}.up.weight", targets)
    return formats.XLABS


def _kohya_name(bfl: str) -> str:
    return "lora_unet_" + bfl.replace(".", "_")


FORMATS: dict[str, Callable] = {
    "diffusers": diffusers_peft,
    "diffusers_metadata": diffusers_with_metadata,
    "ai_toolkit": ai_toolkit,
    "peft_without_prefix": peft_without_prefix,
    "peft_base_model": peft_base_model,
    "kohya": kohya,
    "kohya_all_layers": kohya_all_layers,
    "kohya_text_encoder": kohya_text_encoder,
    "comfyui": comfyui,
    "bfl_peft": bfl_peft,
    "mixture": mixture,
    "xlabs": xlabs,
}


def write_fixture(name: str, folder: Path, transformer: dict, text_encoder: dict, seed: int = 0) -> LoraFixture:
    """Write format `name` (a key of FORMATS) for layers of these shapes into `folder`."""
    writer = LoraWriter(seed, transformer, text_encoder)
    result = FORMATS[name](writer)
    fmt, metadata = result if isinstance(result, tuple) else (result, None)
    folder.mkdir(parents=True, exist_ok=True)
    return writer.save(folder / f"{name}.safetensors", fmt, metadata)


# Files the server must refuse, with a fragment of the message that says why.

UNSUPPORTED: dict[str, tuple[dict[str, torch.Tensor], str]] = {
    "sdxl_kohya": (
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4),
        },
        "looks like an SD 1.x/SDXL kohya LoRA (keys like lora_unet_down_blocks_0",
    ),
    "sd_diffusers": (
        {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 8)},
        "looks like an SD 1.x/SDXL diffusers LoRA",
    ),
    "lokr": (
        {"lora_unet_double_blocks_0_img_attn_qkv.lokr_w1": torch.zeros(4, 4)},
        "LyCORIS LoKr",
    ),
    "loha": (
        {"lora_unet_double_blocks_0_img_attn_qkv.hada_w1_a": torch.zeros(4, 4)},
        "LyCORIS LoHa",
    ),
    "dora_kohya": (
        {
            "lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": torch.zeros(4, 32),
            "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight": torch.zeros(32, 4),
            "lora_unet_double_blocks_0_img_attn_proj.dora_scale": torch.ones(1, 32),
        },
        "DoRA",
    ),
    "dora_peft": (
        {
            "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 32),
            "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 4),
            "transformer.transformer_blocks.0.attn.to_q.lora_magnitude_vector": torch.ones(32),
        },
        "DoRA",
    ),
    "full_checkpoint": (
        {"transformer_blocks.0.attn.to_q.weight": torch.zeros(32, 32), "x_embedder.bias": torch.zeros(32)},
        "look like a full model checkpoint",
    ),
    "no_flux_layer": (
        {
            "transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 32),
            "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(32, 4),
        },
        "looks like a diffusers/PEFT LoRA (keys like transformer.blocks.0.attn1.to_q.lora_A.weight",
    ),
    "text_encoder_only": (
        {
            "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 32),
            "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(37, 4),
        },
        "only changes the text encoder",
    ),
    "unknown": ({"my_lora.weights": torch.zeros(4)}, "not a LoRA format this server knows"),
    "wrong_width": (
        {
            "double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(4, 32),
            "double_blocks.0.img_attn.qkv.lora_B.weight": torch.zeros(9216, 4),  # made for FLUX.1's 3072 width
        },
        "made for a model of another size",
    ),
    "incomplete": (
        {"lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": torch.zeros(4, 32)},
        "incomplete",
    ),
}


def write_unsupported(name: str, folder: Path) -> tuple[Path, str]:
    tensors, message = UNSUPPORTED[name]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_file(tensors, path)
    return path, message


# Rendering, shared by the adapter and hotswap tests.

PROMPT = "a photo of TOK"
GUIDANCE = {"dev": 3.5, "schnell": 0.0}


def render(models, model: str) -> torch.Tensor:
    """64x64, 2 steps, fixed seed; the prompt is encoded after the LoRAs are applied, as the service does."""
    from generation.request import MAX_SEQUENCE_LENGTH

    embeddings = models.encode_prompt(model, PROMPT, MAX_SEQUENCE_LENGTH[model])
    with torch.inference_mode():
        return models.pipeline(model, "txt2img")(
            prompt_embeds=embeddings.prompt_embeds,
            pooled_prompt_embeds=embeddings.pooled_prompt_embeds,
            height=64,
            width=64,
            num_inference_steps=2,
            guidance_scale=GUIDANCE[model],
            max_sequence_length=MAX_SEQUENCE_LENGTH[model],
            generator=torch.Generator("cpu").manual_seed(0),
            output_type="pt",
        ).images.cpu()
