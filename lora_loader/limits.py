"""The LoRA size limits, worded with the settings that raise them.

Every LoRA file is held to the tighter of the two (`SizeLimit.tightest`), from the announced size before
downloading, on the bytes while downloading, and for data: URIs, tar members and cache commits too.
"""

from __future__ import annotations

from guarded_download import SizeLimit, format_size


def cache_limit(max_bytes: int) -> SizeLimit:
    return SizeLimit(
        max_bytes,
        f"the whole LoRA cache may hold (LORA_CACHE_MAX_BYTES={max_bytes}, {format_size(max_bytes)}). "
        "Raise LORA_CACHE_MAX_BYTES to use it.",
    )


def file_limit(max_bytes: int) -> SizeLimit:
    return SizeLimit(
        max_bytes,
        f"a LoRA file may be (LORA_MAX_FILE_BYTES={max_bytes}, {format_size(max_bytes)}). FLUX LoRAs are "
        "usually 20 MB to 1.3 GB; an operator can raise LORA_MAX_FILE_BYTES.",
    )
