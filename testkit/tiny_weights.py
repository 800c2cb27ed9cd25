"""Tiny offline stand-ins for the four weights folders, so tests and CPU smoke runs need no downloads.

`python -m weights.tiny DIR` (or `write_tiny_weights(DIR)`) writes, in about two seconds and without any network
access, folders with the names and layouts of `weights.layout`, so the server's real loading code runs unchanged:

- `FLUX.1-dev/`: the full diffusers layout with random weights (seeded, so every build is byte-identical). The
  shapes are tiny but the wiring is real: a 4-block VAE (`vae_scale_factor` 8, sizes multiples of 16), guidance
  embeddings, dev's scheduler (shift 3.0, dynamic shifting), a hand-written byte-level BPE CLIP tokenizer and a
  SentencePiece T5 tokenizer trained on a few sentences.
- `FLUX.1-schnell/`: only `model_index.json`, `scheduler/` (shift 1.0, no dynamic shifting) and `transformer/`
  (no guidance embeddings, otherwise dev's shapes so it runs with dev's text encoders and VAE).
- `stable-diffusion-safety-checker/` and `nsfw_image_detection/`: the CompVis safety checker and the Falcons.ai
  ViT classifier, with weights set by hand (not random) so tests can drive them deterministically.

The safety models judge brightness
----------------------------------
Both safety models compute one statistic, the image's *mean brightness* b in [0, 1]: the mean of all R, G and B
values (/255) of the 224x224 image their processor makes (CLIPImageProcessor: resize the short side to 224 and
centre-crop; ViTImageProcessor: resize to 224x224). For a uniform image b is its grey level / 255; for a square
image it is the plain mean up to resampling (`mean_brightness`). The verdicts are:

- CompVis checker: `has_nsfw` is True iff b > safety_threshold (None: never flags);
- Falcons.ai classifier: the label is "nsfw" iff b > nsfw_threshold (None: always "normal").

Ties count as not above: the boundary sits TIE_MARGIN = 1e-4 above the threshold, far below one grey level (1/255)
yet far above float32 rounding (about 1e-6 in b). So in float32 images one grey level either side of a threshold
get opposite verdicts, and an image exactly at the threshold (a black image at threshold 0) is never flagged. In
bfloat16 the boundary blurs by about one grey level.

How the weights make that so:

- Every LayerNorm gets eps = 2**30 and weight 2**15. For activations of order 1 the variance vanishes next to eps
  in float32, so each LayerNorm computes exactly x - mean(x), and the whole network is linear in the pixels.
- The patch embedding maps a patch to (its brightness - 1/2) along d = e0 - e1. d has zero mean, so LayerNorm
  leaves it alone. Position embeddings are zero.
- Query and key weights are zero, so attention is uniform and the CLS token receives the mean of the value
  vectors; the value projection keeps only the d component and the output projection undoes the 1/(N+1) dilution
  by the CLS token itself. The MLPs are zero. The CLS token ends as (b - 1/2) d (+ an offset along e2 - e3 for CLIP).
- CompVis: the visual projection gives the image embedding (1/2, b - 1/2, 0, 0) and concept 0 is (0, 1, 0, 0), so
  its cosine f(b) = (b - 1/2) / sqrt(1/4 + (b - 1/2)**2) increases strictly with b. The checker flags when
  round(cosine - concept weight, 3) > 0, so concept 0's weight is f(threshold + TIE_MARGIN) - 0.0005: the 0.0005
  cancels the rounding. Every other concept and special-care concept gets weight 2, out of reach of a cosine, so
  the checker's "special care" adjustment never kicks in.
- Falcons.ai: the logits are (0, 10 * (b - threshold - TIE_MARGIN)), and "nsfw" is label 1.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import sentencepiece
import torch
import transformers
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPConfig,
    CLIPTextConfig,
    CLIPTextModel,
    T5Config,
    T5EncoderModel,
    ViTConfig,
    ViTForImageClassification,
)

from testkit.flux1_models import FLUX1_VAE
from weights.layout import FLUX_DEV, FLUX_SCHNELL, NSFW_CLASSIFIER, SAFETY_CHECKER

logger = logging.getLogger(__name__)

SEED = 0

# Shared by dev and schnell: schnell's transformer has to fit dev's text encoders and VAE.
TEXT_DIM = 32  # T5 d_model == transformer joint_attention_dim; CLIP hidden_size == pooled_projection_dim
T5_VOCAB_SIZE = 256  # room for the SentencePiece pieces plus T5's 100 <extra_id_*> tokens

# The real repos' model_index.json (tokenizer_2 is T5TokenizerFast there, which transformers 5 also accepts).
FLUX_MODEL_INDEX = {
    "_class_name": "FluxPipeline",
    "_diffusers_version": "0.30.0.dev0",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

# What the T5 tokenizer is trained on: prompt-like words, every lower-case letter and digit.
TOKENIZER_CORPUS = (
    "a photo of TOK",
    "a portrait of a cat in the style of TOK, 4k, highly detailed",
    "the quick brown fox jumps over the lazy dog",
    "an oil painting of a lighthouse at sunset with a blue sky",
    "0123456789 abcdefghijklmnopqrstuvwxyz",
)
CLIP_MERGES = (("t", "h"), ("th", "e</w>"), ("o", "f</w>"), ("p", "h"), ("o", "to</w>"), ("t", "o</w>"))
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"

# The real preprocessor configs, so the stand-ins resize, crop and normalise exactly like production.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SAFETY_PREPROCESSOR = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": list(CLIP_MEAN),
    "image_std": list(CLIP_STD),
    "resample": 3,
    "size": 224,
}
VIT_MEAN = VIT_STD = (0.5, 0.5, 0.5)
NSFW_PREPROCESSOR = {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": list(VIT_MEAN),
    "image_processor_type": "ViTImageProcessor",
    "image_std": list(VIT_STD),
    "resample": 2,
    "rescale_factor": 1 / 255,
    "size": {"height": 224, "width": 224},
}

# See the module docstring: LayerNorm(x) == x - mean(x) exactly while var(x) << LN_EPS.
LN_EPS = 2.0**30
LN_GAIN = 2.0**15  # sqrt(LN_EPS), a power of two so the rescaling is exact
SAFETY_HIDDEN = 8
SAFETY_IMAGE_SIZE = 224
CLIP_PATCH = 32
VIT_PATCH = 16
NEVER = 2.0  # a concept weight no cosine can exceed
CLS_OFFSET = 0.5  # the CLIP image embedding's constant component: sets how steeply the cosine follows b
NSFW_LOGIT_SCALE = 10.0
VAE_LOGVAR = -30.0  # diffusers clamps log-variance to [-30, 20]; -30 gives a std of 3e-7
TIE_MARGIN = 1e-4  # how far above the threshold the boundary sits, so that ties reliably count as "not above"


def write_tiny_weights(
    root: str | Path, *, safety_threshold: float | None = None, nsfw_threshold: float | None = None
) -> None:
    """Write all four tiny folders under `root` (see the module docstring for what the thresholds mean)."""
    root = Path(root)
    write_flux_dev(root / FLUX_DEV.name)
    write_flux_schnell(root / FLUX_SCHNELL.name)
    write_safety_checker(root / SAFETY_CHECKER.name, safety_threshold)
    write_nsfw_classifier(root / NSFW_CLASSIFIER.name, nsfw_threshold)


def mean_brightness(image: Image.Image) -> float:
    """The statistic the tiny safety models judge, for a square image (for others they see a resized crop)."""
    return float(np.asarray(image.convert("RGB"), dtype=np.float64).mean() / 255.0)


# FLUX.1 [dev] and [schnell]


def write_flux_dev(path: str | Path) -> None:
    """The full FLUX.1-dev diffusers layout: loads with `FluxPipeline.from_pretrained(path)`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _write_json(path / "model_index.json", FLUX_MODEL_INDEX)
    _flux_scheduler(dev=True).save_pretrained(path / "scheduler")
    clip_vocab_size = _write_clip_tokenizer(path / "tokenizer")
    _write_t5_tokenizer(path / "tokenizer_2")
    with _seeded(SEED):
        _save_clip_text_encoder(_clip_text_encoder(clip_vocab_size), path / "text_encoder")
    with _seeded(SEED + 1):
        _t5_encoder().save_pretrained(path / "text_encoder_2")
    with _seeded(SEED + 2):
        _flux_transformer(guidance_embeds=True).save_pretrained(path / "transformer")
    with _seeded(SEED + 3):
        _vae().save_pretrained(path / "vae")
    logger.info("Wrote tiny FLUX.1-dev to %s", path)


def write_flux_schnell(path: str | Path) -> None:
    """What the server loads from FLUX.1-schnell: the transformer and scheduler, plus model_index.json."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _write_json(path / "model_index.json", FLUX_MODEL_INDEX)
    _flux_scheduler(dev=False).save_pretrained(path / "scheduler")
    with _seeded(SEED + 4):
        _flux_transformer(guidance_embeds=False).save_pretrained(path / "transformer")
    logger.info("Wrote tiny FLUX.1-schnell to %s", path)


@contextmanager
def _seeded(seed: int):
    # Fork so that building weights leaves the caller's global RNG state alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _flux_scheduler(dev: bool) -> FlowMatchEulerDiscreteScheduler:
    # The real repos' values: dev shifts by resolution, schnell does not shift at all.
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0 if dev else 1.0,
        use_dynamic_shifting=dev,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def _flux_transformer(guidance_embeds: bool) -> FluxTransformer2DModel:
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels packed 2x2, as in the real model
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=TEXT_DIM,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),  # must add up to attention_head_dim
    )


def _vae() -> AutoencoderKL:
    # FLUX's VAE narrowed: four blocks keep the real vae_scale_factor of 8, and its scaling and shift factors.
    vae = AutoencoderKL(
        **{**FLUX1_VAE, "block_out_channels": (8, 8, 8, 8), "layers_per_block": 1, "norm_num_groups": 4}
    )
    # A trained VAE's posterior is nearly a point (tiny log-variance); random weights would make every
    # encode a wide random sample, so img2img/inpainting outputs would be noise whatever the mask said.
    logvar = vae.encoder.conv_out
    with torch.no_grad():
        logvar.weight[vae.config.latent_channels :] = 0
        logvar.bias[vae.config.latent_channels :] = VAE_LOGVAR
    return vae


def _clip_text_encoder(vocab_size: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=TEXT_DIM,
        bos_token_id=vocab_size - 2,  # as in real CLIP, the two special tokens are the last ids
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(config)


def _save_clip_text_encoder(model: CLIPTextModel, path: Path) -> None:
    # transformers 5 saves CLIPTextModel without the `text_model.` prefix of the real checkpoint; transformers 4
    # would then silently re-initialise the encoder. Write the real key names (transformers 5 loads both).
    model.save_pretrained(path)
    _prefix_safetensors_keys(path / "model.safetensors", "text_model.")


def _t5_encoder() -> T5EncoderModel:
    config = T5Config(
        vocab_size=T5_VOCAB_SIZE,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    return T5EncoderModel(config)


def _write_clip_tokenizer(path: Path) -> int:
    """A byte-level BPE vocabulary laid out like CLIP's; returns the vocabulary size."""
    path.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    tokens = symbols + [symbol + "</w>" for symbol in symbols] + ["".join(merge) for merge in CLIP_MERGES]
    tokens += [CLIP_BOS, CLIP_EOS]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    _write_json(path / "vocab.json", vocab)
    merges = "#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in CLIP_MERGES)
    (path / "merges.txt").write_text(merges, encoding="utf-8")
    special = {"bos_token": CLIP_BOS, "eos_token": CLIP_EOS, "unk_token": CLIP_EOS, "pad_token": CLIP_EOS}
    _write_json(path / "special_tokens_map.json", special)
    # Without model_max_length the tokenizer reports 1e30 and FluxPipeline's padding overflows.
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}
    _write_json(path / "tokenizer_config.json", config)
    return len(vocab)


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte: printable Latin-1 bytes stand for themselves, the rest are
    shifted past 255, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    return [chr(byte) if byte in printable else chr(next(shifted)) for byte in range(256)]


def _write_t5_tokenizer(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()  # writing to a stream keeps the output folder's path out of the model file
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TOKENIZER_CORPUS),
        model_writer=model,
        model_type="unigram",
        vocab_size=100,
        hard_vocab_limit=False,  # the corpus is too small for 100 pieces; take what it has
        character_coverage=1.0,
        pad_id=0,  # T5's special ids
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    (path / "spiece.model").write_bytes(model.getvalue())
    pieces = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    if pieces + 100 > T5_VOCAB_SIZE:
        raise RuntimeError(f"T5 tokenizer has {pieces} + 100 tokens, more than the encoder's {T5_VOCAB_SIZE}")
    special = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    _write_json(path / "special_tokens_map.json", special)
    config = {"tokenizer_class": "T5Tokenizer", "model_max_length": 512, "extra_ids": 100, "legacy": True, **special}
    _write_json(path / "tokenizer_config.json", config)


# Safety models (see "The safety models judge brightness" above)


def write_safety_checker(path: str | Path, threshold: float | None = None) -> None:
    """CompVis's safety checker, flagging exactly the images with mean brightness above `threshold`."""
    path = Path(path)
    _check_threshold(threshold)
    config = CLIPConfig(
        # The checker has no text tower; the text config is only there because CLIPConfig carries one.
        text_config={"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={
            "hidden_size": SAFETY_HIDDEN,
            "intermediate_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": SAFETY_IMAGE_SIZE,
            "patch_size": CLIP_PATCH,
            "layer_norm_eps": LN_EPS,
        },
        projection_dim=4,
    )
    with _seeded(SEED):  # every weight is overwritten; this only keeps construction off the global RNG
        checker = StableDiffusionSafetyChecker(config)
    _set_safety_checker_weights(checker, threshold)
    checker.save_pretrained(path)
    # The real checkpoint nests the CLIP vision tower one level deeper; transformers 5 reads either spelling.
    _prefix_safetensors_keys(path / "model.safetensors", "vision_model.", only_under="vision_model.")
    _write_json(path / "preprocessor_config.json", SAFETY_PREPROCESSOR)
    logger.info("Wrote tiny safety checker (threshold %s) to %s", threshold, path)


def write_nsfw_classifier(path: str | Path, threshold: float | None = None) -> None:
    """Falcons.ai's ViT classifier, saying "nsfw" exactly for images with mean brightness above `threshold`."""
    path = Path(path)
    _check_threshold(threshold)
    config = ViTConfig(
        hidden_size=SAFETY_HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        image_size=SAFETY_IMAGE_SIZE,
        patch_size=VIT_PATCH,
        layer_norm_eps=LN_EPS,
        id2label={0: "normal", 1: "nsfw"},
        label2id={"normal": 0, "nsfw": 1},
        problem_type="single_label_classification",
    )
    with _seeded(SEED):
        classifier = ViTForImageClassification(config)
    _set_nsfw_classifier_weights(classifier, threshold)
    classifier.save_pretrained(path)  # transformers 5 writes the real checkpoint's (legacy) key names itself
    _write_json(path / "preprocessor_config.json", NSFW_PREPROCESSOR)
    logger.info("Wrote tiny NSFW classifier (threshold %s) to %s", threshold, path)


def _check_threshold(threshold: float | None) -> None:
    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number or None, got {threshold}")


def _brightness_axes() -> tuple[torch.Tensor, torch.Tensor]:
    """d = e0 - e1 carries brightness, u = e2 - e3 a constant; both zero-mean so LayerNorm keeps them."""
    d = torch.zeros(SAFETY_HIDDEN)
    d[0], d[1] = 1.0, -1.0
    u = torch.zeros(SAFETY_HIDDEN)
    u[2], u[3] = 1.0, -1.0
    return d, u


def _brightness_patch_kernel(d: torch.Tensor, std: tuple[float, ...], patch: int) -> torch.Tensor:
    """Conv kernel turning a normalised patch into (patch brightness - mean(processor mean)) * d.

    A normalised value is (p - mean_c) / std_c, so weighting channel c by std_c / (3 patch**2) averages p - mean_c.
    """
    per_channel = torch.tensor(std).view(3, 1, 1).expand(3, patch, patch) / (3 * patch * patch)
    return d.view(-1, 1, 1, 1) * per_channel


def _zero_and_linearise(model: torch.nn.Module) -> None:
    for parameter in model.parameters():
        parameter.zero_()
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.weight.fill_(LN_GAIN)


@torch.no_grad()
def _set_safety_checker_weights(checker: StableDiffusionSafetyChecker, threshold: float | None) -> None:
    _zero_and_linearise(checker)
    d, u = _brightness_axes()
    vision = checker.vision_model
    num_patches = (SAFETY_IMAGE_SIZE // CLIP_PATCH) ** 2

    vision.embeddings.class_embedding.copy_(CLS_OFFSET * u)
    vision.embeddings.patch_embedding.weight.copy_(_brightness_patch_kernel(d, CLIP_STD, CLIP_PATCH))
    attention = vision.encoder.layers[0].self_attn
    attention.v_proj.weight.copy_(torch.outer(d, d) / d.dot(d))  # keep the d component; drops the CLS offset
    # The CLS token received N/(N+1) of the patch mean (it attends to itself too); rescale and re-centre on 1/2.
    attention.out_proj.weight.copy_(torch.eye(SAFETY_HIDDEN) * (num_patches + 1) / num_patches)
    attention.out_proj.bias.copy_((sum(CLIP_MEAN) / 3 - 0.5) * d)

    # Image embedding (CLS_OFFSET, b - 1/2, 0, 0).
    checker.visual_projection.weight[0] = u / u.dot(u)
    checker.visual_projection.weight[1] = d / d.dot(d)
    checker.concept_embeds[:, 2] = 1.0  # orthogonal to every image embedding: cosine 0
    checker.special_care_embeds[:, 2] = 1.0
    checker.concept_embeds_weights.fill_(NEVER)
    checker.special_care_embeds_weights.fill_(NEVER)
    if threshold is not None:
        checker.concept_embeds[0] = torch.tensor([0.0, 1.0, 0.0, 0.0])
        # The checker flags round(cosine - weight, 3) > 0; the 0.0005 puts that boundary at cosine == f(boundary).
        checker.concept_embeds_weights[0] = _brightness_cosine(threshold + TIE_MARGIN) - 0.0005


def _brightness_cosine(brightness: float) -> float:
    """Cosine between the image embedding of an image with this mean brightness and concept 0."""
    x = brightness - 0.5
    return x / math.sqrt(CLS_OFFSET**2 + x * x)


@torch.no_grad()
def _set_nsfw_classifier_weights(classifier: ViTForImageClassification, threshold: float | None) -> None:
    _zero_and_linearise(classifier)
    d, _ = _brightness_axes()
    embeddings = classifier.vit.embeddings
    num_patches = embeddings.patch_embeddings.num_patches

    embeddings.patch_embeddings.projection.weight.copy_(_brightness_patch_kernel(d, VIT_STD, VIT_PATCH))
    embeddings.patch_embeddings.projection.bias.copy_((sum(VIT_MEAN) / 3 - 0.5) * d)  # patch token (b_j - 1/2) d
    attention = classifier.vit.layers[0].attention
    attention.v_proj.weight.copy_(torch.outer(d, d) / d.dot(d))
    attention.o_proj.weight.copy_(torch.eye(SAFETY_HIDDEN) * (num_patches + 1) / num_patches)

    # CLS token (b - 1/2) d; logits (0, scale * (b - boundary)), or a fixed "normal" without a threshold.
    if threshold is None:
        classifier.classifier.bias[1] = -NSFW_LOGIT_SCALE
    else:
        classifier.classifier.weight[1] = NSFW_LOGIT_SCALE * d / d.dot(d)
        classifier.classifier.bias[1] = NSFW_LOGIT_SCALE * (0.5 - threshold - TIE_MARGIN)


# Files


def _prefix_safetensors_keys(file: Path, prefix: str, only_under: str = "") -> None:
    tensors = load_file(file)
    renamed = {(prefix + key if key.startswith(only_under) else key): tensor for key, tensor in tensors.items()}
    save_file(renamed, file, metadata={"format": "pt"})


def _write_json(file: Path, content: dict) -> None:
    file.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _threshold_arg(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m weights.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="folder to write the four tiny weights folders into")
    parser.add_argument(
        "--safety-threshold",
        type=_threshold_arg,
        default=None,
        help="the CompVis checker flags images with mean brightness above this (default: never flags)",
    )
    parser.add_argument(
        "--nsfw-threshold",
        type=_threshold_arg,
        default=None,
        help='the Falcons.ai classifier says "nsfw" above this mean brightness (default: always "normal")',
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    transformers.utils.logging.disable_progress_bar()  # "Writing model shards" bars for 1 MB files are noise
    start = time.perf_counter()
    write_tiny_weights(args.dir, safety_threshold=args.safety_threshold, nsfw_threshold=args.nsfw_threshold)
    print(f"Wrote tiny weights to {args.dir} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
