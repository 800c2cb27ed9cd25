"""LoRA strings -> validated .safetensors files: parse the source, download it, cache it on disk.

    fetcher = LoraFetcher(config)             # a serverconfig.ServerConfig: cache, limits, tokens, endpoints
    lora = fetcher.fetch("huggingface.co/owner/repo")
    lora.path, lora.key, lora.trigger_words

Sources: Replicate models and tars, Hugging Face repos and files, CivitAI pages and download links, any
.safetensors URL, data: URIs and local paths (see `sources.ACCEPTED_FORMS`). Downloads go through
`guarded_download`; Hugging Face failures are worded by `hub_errors`. Errors a user can fix are
`LoraError` (a ValueError). Converting formats and attaching adapters live in `formats` and `adapters`.
Nothing in this package imports cog or predict.py.
"""

from .errors import LoraError
from .fetch import LoraFetcher, LoraFile

__all__ = ["LoraError", "LoraFetcher", "LoraFile"]
