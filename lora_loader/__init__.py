"""LoRA strings -> validated .safetensors files: parse the source, download it, cache it on disk.

    fetcher = LoraFetcher.from_env()          # LORA_CACHE_DIR, LORA_CACHE_MAX_BYTES, tokens, endpoints
    lora = fetcher.fetch("huggingface.co/owner/repo")
    lora.path, lora.key, lora.trigger_words

Sources: Replicate models and tars, Hugging Face repos and files, CivitAI pages and download links, any
.safetensors URL, data: URIs and local paths (see `sources.ACCEPTED_FORMS`). Errors a user can fix are
`LoraError` (a ValueError). Converting formats and attaching adapters live in `formats` and `adapters`.
Nothing in this package imports cog or predict.py.
"""

from .errors import LoraError
from .fetch import LoraFetcher, LoraFile
from .settings import LoraSettings

__all__ = ["LoraError", "LoraFetcher", "LoraFile", "LoraSettings"]
