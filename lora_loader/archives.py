"""Take the one LoRA (and the trainer's config) out of a tar, without trusting the tar.

Replicate's trainer publishes a tar (`output/flux_train_replicate/lora.safetensors`, `config.yaml`,
`captions/*.txt`); data: URIs may hold one too. Nothing is extracted by the tar's own paths: the LoRA
is streamed into a file we name, so absolute paths and `..` cannot write outside the cache. Tars that
carry such names anyway, or a LoRA that is a link, or members larger than the cache may hold, are
refused outright: they are not what a trainer writes.
"""

from __future__ import annotations

import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import LoraError

MAX_CONFIG_BYTES = 1_000_000
CONFIG_NAME = "config.yaml"


@dataclass(frozen=True)
class TarLora:
    member: str  # the LoRA's path inside the tar, for logs
    config_text: str | None  # the trainer's config.yaml, when the tar has one


def is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def extract_lora(tar_path: Path, dest: Path, max_bytes: int, what: str) -> TarLora:
    """Write the tar's single .safetensors member to `dest`; LoraError unless there is exactly one."""
    try:
        with tarfile.open(tar_path, mode="r:*") as tar:
            members = tar.getmembers()
            _check_names(members, what)
            lora = _single_lora(members, what)
            if lora.size > max_bytes:
                raise LoraError(
                    f"The LoRA in {what} is {lora.size} bytes, more than the cache may hold "
                    f"(LORA_CACHE_MAX_BYTES={max_bytes}). Raise LORA_CACHE_MAX_BYTES."
                )
            _copy_member(tar, lora, dest)
            return TarLora(lora.name, _config_text(tar, members, lora))
    except tarfile.TarError as error:
        raise LoraError(f"{what} is not a readable tar archive ({error}). Check the link.") from None


def _check_names(members: list[tarfile.TarInfo], what: str) -> None:
    for member in members:
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts:
            raise LoraError(f"{what} is an unsafe tar: member {member.name!r} points outside the archive.")


def _is_candidate(member: tarfile.TarInfo) -> bool:
    name = PurePosixPath(member.name).name
    # `._name` entries are macOS AppleDouble metadata that tars made on a Mac carry beside each file.
    return name.lower().endswith(".safetensors") and not name.startswith("._") and not member.isdir()


def _single_lora(members: list[tarfile.TarInfo], what: str) -> tarfile.TarInfo:
    candidates = [m for m in members if _is_candidate(m)]
    if len(candidates) == 1 and not candidates[0].isfile():
        raise LoraError(f"{what} is an unsafe tar: {candidates[0].name!r} is a link, not a file.")
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        listed = ", ".join(m.name for m in members[:8] if m.isfile()) or "nothing"
        raise LoraError(f"{what} holds no .safetensors file (it has {listed}). A LoRA tar must hold exactly one.")
    listed = ", ".join(m.name for m in candidates[:8])
    raise LoraError(
        f"{what} holds {len(candidates)} .safetensors files ({listed}); a LoRA tar must hold exactly one. "
        "Publish the LoRA file alone, or give its direct URL."
    )


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    source = tar.extractfile(member)
    if source is None:  # pragma: no cover - isfile() members always have data
        raise LoraError(f"{member.name} in the tar has no data.")
    with source, dest.open("wb") as out:
        shutil.copyfileobj(source, out, length=1 << 20)


def _config_text(tar: tarfile.TarFile, members: list[tarfile.TarInfo], lora: tarfile.TarInfo) -> str | None:
    """The config.yaml beside the LoRA, else any in the tar; None when absent or unreasonably large."""
    configs = [m for m in members if m.isfile() and PurePosixPath(m.name).name == CONFIG_NAME]
    folder = PurePosixPath(lora.name).parent
    configs.sort(key=lambda m: PurePosixPath(m.name).parent != folder)
    if not configs or configs[0].size > MAX_CONFIG_BYTES:
        return None
    source = tar.extractfile(configs[0])
    return source.read().decode("utf-8", errors="replace") if source is not None else None
