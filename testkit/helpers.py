"""Small helpers shared by tests: run a request and read its files back before the next one replaces them."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from generation.request import GenerationRequest


def digest(data: bytes) -> str:
    """What tests compare instead of the bytes themselves: on a mismatch pytest prints two short hex strings,
    where a diff of two image files' bytes would run for minutes."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Output:
    name: str
    data: bytes

    @property
    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.data))

    @property
    def digest(self) -> str:
        return digest(self.data)


def generate(service, **fields) -> list[Output]:
    fields.setdefault("prompt", "a photo of TOK")
    fields.setdefault("num_inference_steps", 2)
    paths = service.generate(GenerationRequest(**fields)).paths
    return [Output(Path(p).name, Path(p).read_bytes()) for p in paths]


def solid_image(path: Path, size: tuple[int, int], color=(200, 40, 40)) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


def png_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    """A small solid PNG, as an upload or URL body."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()
