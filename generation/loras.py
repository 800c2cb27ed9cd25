"""A request's LoRAs onto the model: fetch each source (cached), attach main and extra with their scales,
and tell the user when the prompt lacks the trigger word a LoRA was trained with. What happened to each LoRA
(cache hit or download, attached or only re-scaled) is returned as data (`generation.result.AppliedLoras`)."""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from lora_loader import LoraFetcher
from lora_loader.adapters import LoraSpec, ResidentLora
from lora_loader.errors import prefixed
from lora_loader.hotswap import NotHotswappable

from .execution import ExecutionPaths, Route
from .logs import stage
from .request import GenerationRequest, LoraChoice
from .result import AppliedLoras, FetchOutcome, LoraEvent

logger = logging.getLogger(__name__)

# The reference multiplies go_fast LoRA scales by 1.5 to make up for fusing LoRAs into fp8 weights. Here LoRAs
# run unfused in bf16 beside the fp8 base, so they lose nothing and the same scale means the same effect on both
# paths (docs/DESIGN.md, "LoRA scales"). A GPU measurement showing a loss on our fp8 path sets this instead.
GO_FAST_LORA_MULTIPLIER = 1.0


class LoraStage:
    """The request's LoRAs on the execution path that runs it (generation/execution.py): key-named peft adapters
    on the plain path, two hotswapped slots on a compiled one. Every other path is emptied of LoRAs, so the
    process never holds more than two: the request's, or on a compiled path a previous one parked at scale 0 in
    a slot this request leaves unused (kept for reuse; it adds nothing to the image)."""

    def __init__(self, fetcher: LoraFetcher, paths: ExecutionPaths):
        self.fetcher = fetcher
        self.paths = paths

    def fetch(self, request: GenerationRequest) -> FetchedLoras:
        """The request's LoRA files, from the disk cache or downloaded into it. Changes no model, so the server
        fetches a queued request's LoRAs while another request is on the GPU (generation/gpu_queue.py)."""
        if not (request.main_lora or request.extra_lora):
            return FetchedLoras()
        with stage("Fetching LoRAs") as elapsed:
            main = self._fetch(request.main_lora, request.prompt, "main")
            extra = self._fetch(request.extra_lora, request.prompt, "extra")
        return FetchedLoras(main, extra, elapsed.seconds)

    def apply(self, request: GenerationRequest, route: Route, fetched: FetchedLoras | None = None) -> AppliedLoras:
        """Make `request.model` on `route`'s path carry exactly the request's LoRAs (fetched now unless `fetched`
        is given), at the request's scales times that path's multiplier. A LoRA that path's slots cannot take
        sends the request to the plain path: the returned `route` is the one to run."""
        fetched = self.fetch(request) if fetched is None else fetched
        if not (fetched.main or fetched.extra) and not self._resident():
            return AppliedLoras(route)
        with stage("LoRAs") as elapsed:
            before = self._resident_labels()
            main, extra = (self._still_cached(f, request) for f in (fetched.main, fetched.extra))
            route = self._put_on(route, request.model, main and main.spec, extra and extra.spec)
        resident = len(self._resident())
        logger.info("LoRA adapters resident: %d", resident)
        events = tuple(f.event(request.model, before) for f in (main, extra) if f is not None)
        return AppliedLoras(route, events, resident, fetched.seconds + elapsed.seconds)

    def _put_on(self, route: Route, model: str, main: LoraSpec | None, extra: LoraSpec | None) -> Route:
        try:
            route.path.adapters.apply(model, main, extra, multiplier=route.path.lora_multiplier)
        except NotHotswappable as error:
            route = self.paths.fallback(route, str(error))
            self.paths.plain.adapters.apply(model, main, extra, multiplier=self.paths.plain.lora_multiplier)
        for other in self.paths.all:
            if other is not route.path and other.adapters.resident:
                other.adapters.empty()
        return route

    def _still_cached(self, fetched: _Fetched | None, request: GenerationRequest) -> _Fetched | None:
        """`fetched`, or fetched again when the cache evicted its file while the request waited for the GPU."""
        if fetched is None or fetched.spec.path.exists():
            return fetched
        choice = request.main_lora if fetched.role == "main" else request.extra_lora
        return self._fetch(choice, request.prompt, fetched.role)

    def _resident(self) -> tuple[ResidentLora, ...]:
        return tuple(lora for path in self.paths.all for lora in path.adapters.resident)

    def _resident_labels(self) -> set[tuple[str, str]]:
        """(model, LoRA label) of every adapter held now, to tell an attach from a re-scale afterwards."""
        return {(lora.model, lora.label) for lora in self._resident()}

    def preload(self, source: str, model: str = "dev") -> None:
        """Download and attach a LoRA ahead of the first request (a trained model's own weights, at setup),
        so that request only re-scales it and a broken LoRA fails setup instead of every prediction."""
        # Logged before the work starts: coglet can drop the last line a setup writes from its setup logs.
        # The source itself is logged by the fetcher, with any secrets in it removed.
        logger.info("Preloading the LoRA given at setup (COG_WEIGHTS)")
        with stage("Preloading the LoRA"):
            with prefixed("COG_WEIGHTS"):
                lora = self.fetcher.fetch(source)
            spec = LoraSpec(key=lora.key, path=lora.path, scale=1.0, source=lora.source)
            default = self.paths.default
            self._put_on(Route(default, False, "preload"), model, spec, None)

    def _fetch(self, choice: LoraChoice | None, prompt: str, role: str) -> _Fetched | None:
        if choice is None:
            return None
        cached = self._cached_keys()
        start = time.perf_counter()
        with prefixed("main LoRA" if role == "main" else "extra_lora"):
            lora = self.fetcher.fetch(choice.source)
        seconds = time.perf_counter() - start
        missing = missing_trigger_words(prompt, lora.trigger_words)
        if missing:
            logger.info(
                "LoRA %s was trained with the trigger word %s, which the prompt does not contain; include it "
                "to activate the trained concept",
                lora.source,
                " / ".join(repr(word) for word in missing),
            )
        spec = LoraSpec(key=lora.key, path=lora.path, scale=choice.scale, source=lora.source)
        return _Fetched(role, spec, self._fetch_outcome(lora.key, lora.path, cached), seconds)

    def _cached_keys(self) -> set[str]:
        """The entries in the disk cache now; a key absent before a fetch and present after was downloaded."""
        try:
            return set(os.listdir(self.fetcher.cache.entries_dir))
        except OSError:
            return set()

    def _fetch_outcome(self, key: str, path: Path, cached_before: set[str]) -> FetchOutcome:
        if not path.is_relative_to(self.fetcher.cache.entries_dir):
            return "local"  # a local .safetensors file is read in place, never copied into the cache
        return "cache" if key in cached_before else "download"


@dataclass(frozen=True)
class FetchedLoras:
    """A request's LoRA files on disk, not yet on any model, and how long fetching them took."""

    main: _Fetched | None = None
    extra: _Fetched | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class _Fetched:
    """One LoRA of a request, fetched and ready to attach, with how it was had."""

    role: str
    spec: LoraSpec
    fetch: FetchOutcome
    seconds: float

    def event(self, model: str, resident_before: set[tuple[str, str]]) -> LoraEvent:
        attach = "rescaled" if (model, self.spec.label) in resident_before else "attached"
        return LoraEvent(self.role, self.spec.label, self.spec.scale, self.fetch, attach, self.seconds)


def missing_trigger_words(prompt: str, trigger_words: tuple[str, ...]) -> tuple[str, ...]:
    """The LoRA's trigger words when the prompt contains none of them (case-insensitive, whole words)."""
    if not trigger_words:
        return ()
    for word in trigger_words:
        if re.search(rf"(?<!\w){re.escape(word)}(?!\w)", prompt, flags=re.IGNORECASE):
            return ()
    return trigger_words
