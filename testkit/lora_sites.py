"""LoRA files for the tiny model and the fake sites that serve them, for code that runs the real server.

Shared by the tests (tests/conftest.py's `lora_sites`) and script/soak.py (a developer script: these fakes
are what keeps it offline). `tiny_lora_shapes` reads the layer shapes from the tiny weights on disk, so no
GenerationService is needed; `LoraSites` starts fake Replicate, CivitAI, Hugging Face and plain-file sites
on 127.0.0.1 and gives the environment that points a server at them.
"""

from __future__ import annotations

from pathlib import Path

from testkit import lora_fixtures
from testkit.fakes.core import FakeSite, RecordedRequest
from testkit.fakes.hf_hub import FakeHub
from testkit.fakes.lora_servers import FakeCivitai, FakeReplicate, FakeServer


def tiny_lora_shapes(weights_dir: Path) -> tuple[dict, dict]:
    """(transformer, CLIP text encoder) Linear shapes of the tiny FLUX.1 [dev] in `weights_dir`.
    schnell's tiny transformer has the same shapes, so these LoRAs fit both models."""
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextModel

    folder = Path(weights_dir) / "FLUX.1-dev"
    transformer = FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True)
    return lora_fixtures.linear_shapes(transformer), lora_fixtures.linear_shapes(text_encoder)


def tiny_lora_bytes(shapes: tuple[dict, dict], fmt: str, folder: Path, seed: int) -> bytes:
    """A LoRA in format `fmt` (a key of lora_fixtures.FORMATS) that attaches to the tiny model."""
    path = lora_fixtures.write_fixture(fmt, Path(folder) / f"{fmt}-{seed}", *shapes, seed=seed).path
    return path.read_bytes()


class LoraSites:
    """Fake Replicate, CivitAI, Hugging Face Hub and a plain file host, all on loopback.

    A CivitAI or Replicate model demands the site's `token` when one was set as it was added (the fakes fix
    a route's token when the route is added); a Hub repo is private or gated as `add_repo` says.
    """

    def __init__(self) -> None:
        self.replicate = FakeReplicate()
        self.civitai = FakeCivitai()
        self.hub = FakeHub().start()
        self.files = FakeServer().start()

    def env(self) -> dict[str, str]:
        """What a server process needs to fetch from these sites (its own tokens are up to the caller)."""
        return {
            "REPLICATE_BASE_URL": self.replicate.base_url,
            "CIVITAI_BASE_URL": self.civitai.base_url,
            "HF_ENDPOINT": self.hub.endpoint,
            "HF_HUB_OFFLINE": "0",
            "LORA_ALLOW_PRIVATE_URLS": "1",
        }

    @property
    def servers(self) -> tuple[FakeSite, ...]:
        """Every fake server behind the four sites (CivitAI and Replicate each have a storage host)."""
        return (self.hub, *self.civitai.servers, *self.replicate.servers, self.files)

    @property
    def requests(self) -> list[RecordedRequest]:
        """What every site was asked, site by site."""
        return [request for server in self.servers for request in server.requests]

    def clear_requests(self) -> None:
        for server in self.servers:
            server.clear_requests()

    def reset(self) -> None:
        """Forget every repo, model, file, token, fault and request: the sites can serve the next test."""
        for site in (self.replicate, self.civitai, self.hub, self.files):
            site.reset()

    def close(self) -> None:
        for site in (self.replicate, self.civitai, self.hub, self.files):
            site.close()

    def __enter__(self) -> LoraSites:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
