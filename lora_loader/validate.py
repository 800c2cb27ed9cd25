"""Check that a file is a sound safetensors LoRA before anything uses it, and say what is wrong when it is not.

Two stages. The first, `check_safetensors`, runs when a file arrives (download, tar member, local path). A LoRA
URL can answer with anything: an HTML login page, a JSON error, a pickle checkpoint (which runs
code when loaded), a tar, nothing at all. Loaders fail on those with cryptic errors or, for pickles,
worse. So every file is checked here first, structurally (no tensor is read, nothing is deserialized
but the JSON header): an 8-byte little-endian header length that fits the file, a JSON object whose
entries have a dtype, a shape and data_offsets that tile the data section exactly (what the safetensors
reader requires), then the safetensors library opens it as the final word. A failure names what the
first bytes look like, so "got an HTML page" replaces "HeaderTooLarge".

The second stage runs on the tensors when a LoRA is read for attaching (`lora_loader.formats` calls it), before
anything is attached: every tensor is a finite floating-point number array (a NaN or Inf in one LoRA layer turns
every image black, and the pipeline would report that as a success), and each LoRA tensor has the shape its role
needs: `matrix` for lora_down/lora_up (a 2-D matrix, ranks matching), `alpha_value` for a scalar alpha,
`vector` for a bias delta. Each failure is a LoraError that names the tensor and says what is wrong with it.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .errors import LoraError

MAX_HEADER_BYTES = 100_000_000  # the safetensors reader's own limit
SNIFF_BYTES = 512  # enough for a tar header's "ustar" magic at offset 257
# Bits per element; a dtype missing here (a newer library's) is bounds-checked only.
_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64,
    "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip
NOT_SAFETENSORS_HINT = "only .safetensors LoRAs are loaded"


@dataclass(frozen=True)
class SafetensorsInfo:
    tensor_count: int
    metadata: dict[str, str]


def check_safetensors(path: Path, what: str) -> SafetensorsInfo:
    """The header facts of the safetensors file at `path`, or a LoraError saying what `what` served instead."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(SNIFF_BYTES)
        header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
        if size == 0:
            raise LoraError(f"{what} is an empty file (0 bytes), not a LoRA. Check the link.")
        if len(head) < 8 or header_len < 2 or header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise _not_safetensors(what, head, f"its header length {header_len} does not fit a file of {size} bytes")
        f.seek(8)
        raw = f.read(header_len)
    header = _parse_header(raw, what, head)
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if not entries:
        raise LoraError(f"{what} is a .safetensors file with no tensors in it, so it cannot be a LoRA.")
    _check_entries(entries, size - 8 - header_len, what)
    metadata = _check_metadata(header.get("__metadata__"), what)
    _open_with_library(path, what)
    return SafetensorsInfo(tensor_count=len(entries), metadata=metadata)


def describe_content(head: bytes) -> str | None:
    """What a file whose first bytes are `head` looks like, when it is a recognizable non-LoRA."""
    if not head:
        return "an empty file (0 bytes)"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    low = text[:64].lower()
    if head.startswith(b"PK\x03\x04"):
        return f"a PyTorch pickle/zip checkpoint (.ckpt/.pt/.bin, a zip archive); {NOT_SAFETENSORS_HINT}"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return f"a PyTorch pickle checkpoint (.ckpt/.pt/.bin); {NOT_SAFETENSORS_HINT}"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "a tar archive where a .safetensors file was expected"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip-compressed file"
    if head.startswith(b"GGUF"):
        return f"a GGUF file; {NOT_SAFETENSORS_HINT}"
    if low.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer file instead of the file itself"
    if low.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<!--")):
        return f"an HTML page (the first bytes look like {_snippet(text)})"
    if low.startswith(b"<"):
        return f"an XML or HTML document (the first bytes look like {_snippet(text)})"
    if low.startswith((b"{", b"[")):
        return f"a JSON document, perhaps an error message: {_snippet(text, 120)}"
    if _is_text(head):
        return f"a text file (the first bytes look like {_snippet(text)})"
    return None


def _not_safetensors(what: str, head: bytes, detail: str) -> LoraError:
    described = describe_content(head)
    if described is not None:
        return LoraError(f"{what} is not a .safetensors LoRA: got {described}.")
    return LoraError(f"{what} is not a .safetensors LoRA ({detail}); {NOT_SAFETENSORS_HINT}.")


def _parse_header(raw: bytes, what: str, head: bytes) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _not_safetensors(what, head, "its header is not JSON") from None
    if not isinstance(header, dict):
        raise _not_safetensors(what, head, "its header is not a JSON object")
    return header


def _check_entries(entries: dict, data_size: int, what: str) -> None:
    spans = []
    for name, entry in entries.items():
        spans.append(_check_entry(name, entry, data_size, what))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise _corrupt(what, f"tensor data is not contiguous at byte {begin}")
        position = end
    if position != data_size:
        raise _corrupt(what, f"tensors cover {position} of its {data_size} data bytes (truncated or padded)")


def _check_entry(name: str, entry: object, data_size: int, what: str) -> tuple[int, int]:
    if not isinstance(entry, dict):
        raise _corrupt(what, f"header entry {name!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or not _int_list(shape) or not _int_list(offsets) or len(offsets) != 2:
        raise _corrupt(what, f"tensor {name!r} lacks a valid dtype, shape or data_offsets")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise _corrupt(what, f"tensor {name!r} ends at byte {end} of {data_size}: the file is truncated or damaged")
    bits = _DTYPE_BITS.get(dtype)
    if bits is not None and end - begin != math.ceil(math.prod(shape) * bits / 8):
        raise _corrupt(what, f"tensor {name!r} has {end - begin} bytes for shape {shape} of {dtype}")
    return begin, end


def _check_metadata(metadata: object, what: str) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt(what, "its __metadata__ is not a map of strings")
    return dict(metadata)


def _open_with_library(path: Path, what: str) -> None:
    # The reader the loaders use gets the last word on the header; tensors are not read.
    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except SafetensorError as error:
        raise _corrupt(what, str(error)) from None


def _corrupt(what: str, detail: str) -> LoraError:
    return LoraError(
        f"{what} is not a valid .safetensors file ({detail}). The file may be damaged or incomplete: "
        "check the link, or publish the LoRA again."
    )


def _int_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def _is_text(head: bytes) -> bool:
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c in string.printable for c in decoded[:256])


def _snippet(data: bytes, limit: int = 40) -> str:
    text = data[: limit * 2].decode("utf-8", errors="replace")
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text[:limit] + ("…" if len(text) > limit else "")


# The tensors of a LoRA: what each role needs (lora_loader.formats names the roles).


def check_tensor_values(tensors: dict[str, torch.Tensor], integers_allowed: Callable[[str], bool]) -> None:
    """Every tensor holds finite floating-point numbers (integers where `integers_allowed(key)`: trainers save an
    alpha that defaulted to the rank as an integer); LoraError naming the first that does not."""
    for key in sorted(tensors):
        tensor = tensors[key]
        integer = not tensor.is_floating_point() and not tensor.is_complex() and tensor.dtype != torch.bool
        if integer and integers_allowed(key):
            continue
        if not tensor.is_floating_point():
            raise LoraError(
                f"Tensor {key} holds {_dtype_name(tensor)} values, but LoRA weights are floating-point numbers: "
                "the file is damaged or is not a LoRA."
            )
        if tensor.device.type == "meta":
            continue  # shape-only tensors (the full-size format tests) carry no values to check
        # max |x| is NaN or Inf exactly when some element is, and is several times faster on CPU than isfinite
        # (for bf16/fp16 most of all); only a bad tensor pays for the exact count.
        if tensor.numel() == 0 or bool(torch.isfinite(tensor.abs().amax())):
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            kind = "NaN" if bool(torch.isnan(tensor).any()) else "infinite"
            raise LoraError(
                f"Tensor {key} has {bad} {kind} value(s) of {tensor.numel()}: a LoRA with NaN or Inf weights turns "
                "every image black. The training run diverged or the file is damaged; use an earlier save."
            )


def matrix(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """A lora_down/lora_up tensor as a 2-D matrix. Convolution-shaped saves of Linear layers ([rank, in, 1, 1])
    are the same matrix."""
    if tensor.dim() == 4 and tuple(tensor.shape[2:]) == (1, 1):
        tensor = tensor.flatten(1)
    if tensor.dim() != 2 or 0 in tensor.shape:
        raise LoraError(
            f"Tensor {key} has shape {list(tensor.shape)}, but a LoRA weight is a matrix (rank × features): "
            "the file is damaged or was written wrongly."
        )
    return tensor


def check_ranks(down_key: str, down: torch.Tensor, up_key: str, up: torch.Tensor) -> None:
    """lora_down is rank × in, lora_up out × rank, with the same rank."""
    if down.shape[0] != up.shape[1]:
        raise LoraError(
            f"Tensors {down_key} (rank {down.shape[0]}) and {up_key} (rank {up.shape[1]}) do not fit together: "
            "a LoRA layer's down and up weights share one rank. The file is damaged or mixes two LoRAs."
        )


def alpha_value(key: str, tensor: torch.Tensor) -> float:
    """A layer's alpha: one nonzero number."""
    if tensor.numel() != 1:
        raise LoraError(
            f"Tensor {key} has {tensor.numel()} elements (shape {list(tensor.shape)}), but a LoRA alpha is a single "
            "number: the file is damaged or was written wrongly."
        )
    alpha = float(tensor.reshape(()).float())
    if alpha == 0:
        raise LoraError(
            f"Tensor {key} is 0: an alpha of 0 makes the layer change nothing in some loaders and means 'alpha = "
            "rank' in others, so this file has no single meaning. Re-save it with its real alpha."
        )
    return alpha


def vector(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """A bias delta: one number per output feature."""
    if tensor.dim() != 1 or tensor.numel() == 0:
        raise LoraError(
            f"Tensor {key} has shape {list(tensor.shape)}, but a bias change is a vector (one value per output "
            "feature): the file is damaged or was written wrongly."
        )
    return tensor


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")
