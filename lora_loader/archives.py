"""Take the one LoRA (and the trainer's config) out of a tar, without trusting the tar.

Replicate's trainer publishes a tar (`output/flux_train_replicate/lora.safetensors`, `config.yaml`,
`captions/*.txt`); data: URIs may hold one too. Nothing is extracted by the tar's own paths: the LoRA
is streamed into a file we name, so absolute paths and `..` cannot write outside the cache. Tars that
carry such names anyway, or links, devices or fifos, or a LoRA larger than the size limit, are refused
outright: they are not what a trainer writes.

A compressed tar is a decompression bomb candidate: a few kB of gzip can claim terabytes. Members are
read one header at a time and the archive is refused as soon as its unpacked extent passes the limit
(plus room for the config and captions) or it has more members than any trainer writes, so neither
disk nor CPU is spent on the rest; the LoRA's copy is capped too, whatever its header said.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from guarded_download import SizeLimit

from .errors import LoraError

MAX_CONFIG_BYTES = 1_000_000
CONFIG_NAME = "config.yaml"
MAX_MEMBERS = 10_000  # a trainer's tar has a LoRA, a config and one caption per training image
EXTRA_BYTES = 256 * 10**6  # what the members beside the LoRA (captions, config, samples) may add


@dataclass(frozen=True)
class TarLora:
    member: str  # the LoRA's path inside the tar, for logs
    config_text: str | None  # the trainer's config.yaml, when the tar has one


def is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def extract_lora(tar_path: Path, dest: Path, limit: SizeLimit, what: str) -> TarLora:
    """Write the tar's single .safetensors member to `dest`; LoraError unless there is exactly one."""
    try:
        with tarfile.open(tar_path, mode="r:*") as tar:
            members = _safe_members(tar, limit, what)
            lora = _single_lora(members, what)
            limit.check(f"The LoRA in {what}", lora.size)
            _copy_member(tar, lora, dest, limit, what)
            return TarLora(lora.name, _config_text(tar, members, lora))
    except (tarfile.TarError, EOFError, OSError) as error:  # EOFError, OSError: a damaged gzip stream
        if isinstance(error, OSError) and not _is_format_error(error):
            raise  # the disk, not the archive: the caller reports it
        raise LoraError(f"{what} is not a readable tar archive ({error}). Check the link.") from None


def _safe_members(tar: tarfile.TarFile, limit: SizeLimit, what: str) -> list[tarfile.TarInfo]:
    """Every member, header by header, refusing unsafe names and types and bomb-sized extents early."""
    members = []
    budget = limit.max_bytes + EXTRA_BYTES
    for member in tar:  # reads one header at a time (seeking a gzip stream decompresses up to it)
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts:
            raise LoraError(f"{what} is an unsafe tar: member {member.name!r} points outside the archive.")
        if not (member.isfile() or member.isdir()):
            kind = "a link" if member.issym() or member.islnk() else "a device or fifo"
            raise LoraError(f"{what} is an unsafe tar: {member.name!r} is {kind}, not a file.")
        if member.offset_data + member.size > budget:
            raise LoraError(
                f"{what} unpacks to more than {budget} bytes (member {member.name!r}), more than a LoRA tar "
                f"holds; the LoRA itself may be at most {limit.max_bytes} bytes. Publish the LoRA file alone."
            )
        members.append(member)
        if len(members) > MAX_MEMBERS:
            raise LoraError(f"{what} has more than {MAX_MEMBERS} members; a LoRA tar holds a handful.")
    return members


def _is_format_error(error: OSError) -> bool:
    # gzip/bz2/lzma raise OSError subclasses (BadGzipFile) or OSError without errno for damaged data.
    return error.errno is None


def _is_candidate(member: tarfile.TarInfo) -> bool:
    name = PurePosixPath(member.name).name
    # `._name` entries are macOS AppleDouble metadata that tars made on a Mac carry beside each file.
    return name.lower().endswith(".safetensors") and not name.startswith("._") and not member.isdir()


def _single_lora(members: list[tarfile.TarInfo], what: str) -> tarfile.TarInfo:
    candidates = [m for m in members if _is_candidate(m)]
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


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, limit: SizeLimit, what: str) -> None:
    source = tar.extractfile(member)
    if source is None:  # pragma: no cover - isfile() members always have data
        raise LoraError(f"{member.name} in the tar has no data.")
    written = 0
    with source, dest.open("wb") as out:
        while chunk := source.read(1 << 20):
            written += len(chunk)
            limit.check(f"The LoRA in {what}", written)  # whatever the header claimed
            out.write(chunk)


def _config_text(tar: tarfile.TarFile, members: list[tarfile.TarInfo], lora: tarfile.TarInfo) -> str | None:
    """The config.yaml beside the LoRA, else any in the tar; None when absent or unreasonably large."""
    configs = [m for m in members if m.isfile() and PurePosixPath(m.name).name == CONFIG_NAME]
    folder = PurePosixPath(lora.name).parent
    configs.sort(key=lambda m: PurePosixPath(m.name).parent != folder)
    if not configs or configs[0].size > MAX_CONFIG_BYTES:
        return None
    source = tar.extractfile(configs[0])
    return source.read().decode("utf-8", errors="replace") if source is not None else None
