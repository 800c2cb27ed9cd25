"""The folders under WEIGHTS_DIR and the Hugging Face repos they come from.

Each folder keeps the layout of its source repo (diffusers / transformers `from_pretrained` layouts),
so the same loading code runs on the real weights and on the tiny stand-ins. `allow_patterns` lists
only what the pipelines load: FLUX.1-dev's 23 GB single-file checkpoints (`flux1-dev.safetensors`,
`ae.safetensors`) are never fetched, and schnell contributes only its transformer and scheduler
because it shares text encoders, tokenizers and VAE with dev.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WeightsFolder:
    name: str  # folder under WEIGHTS_DIR
    repo_id: str  # Hugging Face repo it is downloaded from
    allow_patterns: tuple[str, ...]  # files the loaders need, as huggingface_hub glob patterns
    required_files: tuple[str, ...]  # present when the folder is usable
    gated: bool = False  # needs an accepted licence and HF_TOKEN


FLUX_DEV = WeightsFolder(
    name="FLUX.1-dev",
    repo_id="black-forest-labs/FLUX.1-dev",
    allow_patterns=(
        "model_index.json",
        "scheduler/*",
        "text_encoder/*",
        "text_encoder_2/*",
        "tokenizer/*",
        "tokenizer_2/*",
        "transformer/*",
        "vae/*",
    ),
    required_files=(
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder_2/config.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer_2/tokenizer_config.json",
        "transformer/config.json",
        "vae/config.json",
    ),
    gated=True,
)

FLUX_SCHNELL = WeightsFolder(
    name="FLUX.1-schnell",
    repo_id="black-forest-labs/FLUX.1-schnell",
    allow_patterns=("model_index.json", "scheduler/*", "transformer/*"),
    required_files=("scheduler/scheduler_config.json", "transformer/config.json"),
)

SAFETY_CHECKER = WeightsFolder(
    name="stable-diffusion-safety-checker",
    repo_id="CompVis/stable-diffusion-safety-checker",
    allow_patterns=("config.json", "preprocessor_config.json", "*.safetensors"),
    required_files=("config.json", "preprocessor_config.json"),
)

NSFW_CLASSIFIER = WeightsFolder(
    name="nsfw_image_detection",
    repo_id="Falconsai/nsfw_image_detection",
    allow_patterns=("config.json", "preprocessor_config.json", "*.safetensors"),
    required_files=("config.json", "preprocessor_config.json"),
)

ALL_FOLDERS = (FLUX_DEV, FLUX_SCHNELL, SAFETY_CHECKER, NSFW_CLASSIFIER)
