"""CivitAI: turn a model page or a version id into the download URL of its SafeTensor LoRA file.

CivitAI has two ids that users mix up (cog-flux#66): the model id of the page URL
`civitai.com/models/<model id>[/<slug>][?modelVersionId=<version id>]`, and the version id that
download links carry, `civitai.com/api/download/models/<version id>`. A page URL is resolved through
the models API (`/api/v1/models/<id>`): the version named by `modelVersionId`, else the first (newest)
one, and in it the primary file of type Model in SafeTensor format. A download link is used directly,
with `type=Model&format=SafeTensor` unless the link chose a file itself; its version's metadata
(`/api/v1/model-versions/<id>`) gives the trigger words and the base model, best effort. 404s say which
id was probably given; 401/403 say that a token is needed. The token goes in an `Authorization: Bearer`
header, which httpx2 drops when the download endpoint redirects (307) to signed storage on another host.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import httpx2

from guarded_download import HTTPStatusError, Pace, RetryPolicy, bearer, get_json

from .errors import LoraError
from .sources import CivitaiModel, CivitaiVersion
from .triggers import merge, split_words

logger = logging.getLogger(__name__)

LORA_TYPES = ("LORA", "LoCon", "DoRA")
DEFAULT_FILE_QUERY = "type=Model&format=SafeTensor"
TOKEN_PAGE = "https://civitai.com/user/account"


@dataclass(frozen=True)
class CivitaiDownload:
    url: str
    version_id: int
    trigger_words: tuple[str, ...] = ()
    details: dict = field(default_factory=dict)


def resolve_model(
    client: httpx2.Client, source: CivitaiModel, base_url: str, token: str | None, retry: RetryPolicy, pace: Pace
) -> CivitaiDownload:
    try:
        model = get_json(client, f"{base_url}/api/v1/models/{source.model_id}", bearer(token), retry, pace)
    except HTTPStatusError as error:
        raise explain_status(error, source, token) from None
    if not isinstance(model, dict) or not isinstance(model.get("modelVersions"), list):
        raise LoraError(f"CivitAI's answer for model {source.model_id} has no versions. Check CIVITAI_BASE_URL.")
    version = _pick_version(model, source)
    _warn_unusual(source.display, model.get("type"), version.get("baseModel"))
    file = _safetensor_file(version, source.display)
    url = file.get("downloadUrl") or version.get("downloadUrl")
    if not isinstance(url, str):
        raise LoraError(f"CivitAI gave no download URL for {source.display}. Try again later.")
    logger.info(
        "LoRA %s: CivitAI model %s %r, version %s %r (%s), file %s",
        source.display,
        source.model_id,
        model.get("name"),
        version.get("id"),
        version.get("name"),
        version.get("baseModel"),
        file.get("name"),
    )
    return CivitaiDownload(url, int(version["id"]), merge(split_words(version.get("trainedWords"))), _details(version))


def resolve_version(
    client: httpx2.Client, source: CivitaiVersion, base_url: str, token: str | None, retry: RetryPolicy, pace: Pace
) -> CivitaiDownload:
    query = source.query or DEFAULT_FILE_QUERY
    url = f"{base_url}/api/download/models/{source.version_id}?{query}"
    try:
        api_url = f"{base_url}/api/v1/model-versions/{source.version_id}"
        version = get_json(client, api_url, bearer(token), retry, pace)
    except HTTPStatusError as error:
        if error.status == 404:
            raise explain_status(error, source, token) from None
        logger.info("LoRA %s: no version metadata (HTTP %s); downloading anyway", source.display, error.status)
        return CivitaiDownload(url, source.version_id)
    if not isinstance(version, dict):
        return CivitaiDownload(url, source.version_id)
    model = version.get("model") if isinstance(version.get("model"), dict) else {}
    _warn_unusual(source.display, model.get("type"), version.get("baseModel"))
    words = merge(split_words(version.get("trainedWords")))
    return CivitaiDownload(url, source.version_id, words, _details(version))


def explain_status(error: HTTPStatusError, source: CivitaiModel | CivitaiVersion, token: str | None) -> LoraError:
    """Advice for a CivitAI error status, naming the id kind the URL needs."""
    if error.status in (401, 403):
        if token:
            sent = "the token in the URL" if source.token else "CIVITAI_API_TOKEN"
            return LoraError(
                f"CivitAI refused {sent} for {source.display} (HTTP {error.status}): the token is invalid "
                f"or its account may not download this model. Check the key at {TOKEN_PAGE}."
            )
        return LoraError(
            f"CivitAI requires an API token to download {source.display} (HTTP {error.status}). Create a key at "
            f"{TOKEN_PAGE} and set CIVITAI_API_TOKEN to it."
        )
    if error.status == 404 and isinstance(source, CivitaiModel):
        if source.version_id is not None:
            return LoraError(
                f"CivitAI has no model {source.model_id} (HTTP 404). Check the model id, the number after "
                f"civitai.com/models/; or use civitai.com/api/download/models/{source.version_id} for version "
                f"{source.version_id} directly."
            )
        return LoraError(
            f"CivitAI has no model with id {source.model_id} (HTTP 404). civitai.com/models/<id> takes the MODEL id "
            f"from the model page's URL. If {source.model_id} is a model VERSION id (from a download link or "
            f"?modelVersionId=), use civitai.com/api/download/models/{source.model_id} instead."
        )
    if error.status == 404:
        return LoraError(
            f"CivitAI has no model version {source.version_id} (HTTP 404). civitai.com/api/download/models/<id> "
            f"takes a model VERSION id (the modelVersionId of the model page, or its download link). If "
            f"{source.version_id} is the model id from the page URL, use civitai.com/models/{source.version_id} "
            "instead."
        )
    return LoraError(f"CivitAI answered HTTP {error.status} for {source.display}. Try again later.")


def _pick_version(model: dict, source: CivitaiModel) -> dict:
    versions = [v for v in model["modelVersions"] if isinstance(v, dict) and "id" in v]
    if not versions:
        raise LoraError(f"CivitAI model {source.model_id} has no published version to download.")
    if source.version_id is None:
        return versions[0]  # CivitAI lists the newest first
    for version in versions:
        if int(version["id"]) == source.version_id:
            return version
    ids = ", ".join(str(v["id"]) for v in versions[:10])
    raise LoraError(
        f"CivitAI model {source.model_id} has no version {source.version_id} (its versions: {ids}). "
        f"Check ?modelVersionId=, or drop it to use the newest version."
    )


def _safetensor_file(version: dict, what: str) -> dict:
    files = [f for f in version.get("files") or [] if isinstance(f, dict)]
    usable = [f for f in files if f.get("type") == "Model" and (f.get("metadata") or {}).get("format") == "SafeTensor"]
    usable.sort(key=lambda f: not f.get("primary"))
    if usable:
        return usable[0]
    listed = ", ".join(f"{f.get('name')} ({(f.get('metadata') or {}).get('format', f.get('type'))})" for f in files)
    raise LoraError(
        f"CivitAI version {version.get('id')} of {what} has no SafeTensor model file"
        + (f" (it has {listed})" if listed else "")
        + ". Only .safetensors LoRAs are loaded."
    )


def _warn_unusual(what: str, model_type: object, base_model: object) -> None:
    if isinstance(model_type, str) and model_type not in LORA_TYPES:
        logger.warning("LoRA %s: CivitAI lists it as a %s, not a LoRA; loading it may fail", what, model_type)
    if isinstance(base_model, str) and not base_model.startswith("Flux.1"):
        logger.warning(
            "LoRA %s: CivitAI says it was trained for %s, not FLUX.1; it may have no effect or fail to load",
            what,
            base_model,
        )


def _details(version: dict) -> dict:
    model = version.get("model") if isinstance(version.get("model"), dict) else {}
    return {
        "civitai_version_id": version.get("id"),
        "civitai_version_name": version.get("name"),
        "civitai_model_name": model.get("name"),
        "base_model": version.get("baseModel"),
    }
