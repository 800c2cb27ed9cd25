"""FLUX.1 [dev] at its real shapes, in no memory: the transformer, CLIP-L and T5-XXL for LoRA format tests (and the
VAE's config, for the GPU check and the byte counts).

The configs are those of the public `black-forest-labs/FLUX.1-dev` repository (`transformer/`, `text_encoder/`,
`text_encoder_2/` config.json). The models are built on the meta device, then every parameter becomes a CPU
tensor of zeros with stride 0 (`torch.zeros(()).expand(shape)`): a real CPU tensor of the real shape that
occupies 4 bytes. peft wraps such layers, creates its LoRA layers next to them in real memory and computes their
ΔW like on any model, so a LoRA can be attached to full-size FLUX.1 on a laptop; only a forward pass would be
meaningless (and is never run). `reduced=True` gives the model the numeric tests use: FLUX.1's full widths with
2 double and 2 single blocks, 2 CLIP layers and 2 T5 blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

FLUX1_DEV_TRANSFORMER = {
    "attention_head_dim": 128,
    "guidance_embeds": True,
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 19,
    "num_single_layers": 38,
    "patch_size": 1,
    "pooled_projection_dim": 768,
    "axes_dims_rope": (16, 56, 56),
}
CLIP_L = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
T5_XXL = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32,
    "dropout_rate": 0.0,
}

FLUX1_VAE = {  # black-forest-labs/FLUX.1-dev vae/config.json
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}


@dataclass
class Flux1:
    """The three models a LoRA can change, and a pipeline holding them (no VAE, tokenizers or scheduler)."""

    pipe: FluxPipeline

    @property
    def transformer(self) -> FluxTransformer2DModel:
        return self.pipe.transformer

    def pipeline(self, model: str, mode: str) -> FluxPipeline:
        """What `lora_loader.adapters.FluxPipelines` asks for: this one pipeline stands for dev (and schnell)."""
        return self.pipe


def flux1_dev(reduced: bool = False) -> Flux1:
    """FLUX.1 [dev], or its reduced-depth version at full width (see the module docstring): zero memory, float32,
    CPU."""
    transformer, clip, t5 = dict(FLUX1_DEV_TRANSFORMER), dict(CLIP_L), dict(T5_XXL)
    if reduced:
        transformer["num_layers"], transformer["num_single_layers"] = 2, 2
        clip["num_hidden_layers"], t5["num_layers"] = 2, 2
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**transformer)
        clip = CLIPTextModel(CLIPTextConfig(**clip))
        t5 = T5EncoderModel(T5Config(**t5))
    for model in (transformer, clip, t5):
        _zero_memory(model)
    pipe = FluxPipeline(
        scheduler=None, vae=None, text_encoder=clip, tokenizer=None, text_encoder_2=t5, tokenizer_2=None,
        transformer=transformer,
    )  # fmt: skip
    return Flux1(pipe)


def _zero_memory(model: torch.nn.Module) -> None:
    """Meta tensors -> CPU zeros of the same shape that share one element (stride 0)."""
    for module in model.modules():
        for name, parameter in list(module._parameters.items()):
            if parameter is not None:
                zeros = torch.zeros((), dtype=torch.float32).expand(parameter.shape)
                module._parameters[name] = torch.nn.Parameter(zeros, requires_grad=False)
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = torch.zeros((), dtype=buffer.dtype).expand(buffer.shape)
