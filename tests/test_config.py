"""serverconfig: every variable read once into one frozen ServerConfig, every default in one place, and a bad
value of any kind is one ConfigError that names its variable (and never shows a token)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from lora_loader import LoraFetcher
from serverconfig import ConfigError, ServerConfig

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_defaults() -> None:
    config = ServerConfig.from_env({})

    assert config.weights_dir == Path("model-cache").absolute()
    assert config.lora_cache_dir == Path("weights-cache").absolute()
    assert (config.lora_cache_max_bytes, config.lora_max_file_bytes) == (20 * 10**9, 6 * 10**9)
    assert config.lora_cache_in_use_seconds == 60.0
    assert (config.connect_timeout, config.read_timeout) == (10.0, 30.0)
    assert (config.download_deadline, config.download_min_rate, config.download_rate_window) == (600.0, 100_000, 30.0)
    assert (config.hf_endpoint, config.civitai_base_url) == ("https://huggingface.co", "https://civitai.com")
    assert config.replicate_base_url == "https://replicate.com"
    assert (config.hf_token, config.civitai_token, config.replicate_token) == (None, None, None)
    assert not config.allow_private_urls and config.lora_local_dirs == ()
    assert (config.compile, config.attention_backend) == ("auto", "auto")
    assert config.compile_cache_dir == Path("compile-cache").absolute()
    assert config == ServerConfig(), "from_env with nothing set is the dataclass's own defaults"


def test_device_and_dtype() -> None:
    assert ServerConfig.from_env({"FLUX_DEVICE": "cpu"}).dtype == "float32"
    assert ServerConfig.from_env({"FLUX_DEVICE": "cuda"}).dtype == "bfloat16"  # parsed, not opened: no GPU needed
    assert ServerConfig.from_env({"FLUX_DEVICE": "cuda:1", "FLUX_DTYPE": "FP16"}).dtype == "float16"
    assert ServerConfig(device="cpu", dtype="bf16").dtype == "bfloat16"
    with pytest.raises(ConfigError, match="FLUX_DTYPE='int8' is not supported") as caught:
        ServerConfig(device="cpu", dtype="int8")  # given in code, still named by its variable
    assert caught.value.variables == ("FLUX_DTYPE",)


def test_values_of_every_kind_parse(tmp_path: Path) -> None:
    config = ServerConfig.from_env(
        {
            "WEIGHTS_DIR": str(tmp_path / "w"),
            "TMPDIR": str(tmp_path),
            "HF_TOKEN": "  hf_Secret  ",
            "CIVITAI_BASE_URL": "http://127.0.0.1:1/",
            "REPLICATE_BASE_URL": "mirror.example.com",
            "LORA_CACHE_MAX_BYTES": "1.5GiB",
            "LORA_MAX_FILE_BYTES": "500 MB",
            "LORA_CACHE_IN_USE_SECONDS": "0",
            "LORA_ALLOW_PRIVATE_URLS": "Yes",
            "LORA_LOCAL_DIRS": f"{tmp_path}{os.pathsep}{tmp_path}/sub/..{os.pathsep}",
            "LORA_CONNECT_TIMEOUT": "5",
            "LORA_READ_TIMEOUT": "45s",
            "DOWNLOAD_DEADLINE_SECONDS": "120",
            "DOWNLOAD_MIN_BYTES_PER_SECOND": "1.5MB",
            "DOWNLOAD_RATE_WINDOW_SECONDS": "2.5s",
            "FLUX_DEVICE": "cpu",
        }
    )

    assert config.weights_dir == tmp_path / "w" and config.output_dir.parent == tmp_path
    assert config.hf_token == "hf_Secret"
    assert (config.civitai_base_url, config.replicate_base_url) == ("http://127.0.0.1:1", "https://mirror.example.com")
    assert (config.lora_cache_max_bytes, config.lora_max_file_bytes) == (int(1.5 * 2**30), 500 * 10**6)
    assert config.lora_cache_in_use_seconds == 0.0 and config.allow_private_urls
    assert config.lora_local_dirs == (tmp_path.resolve(), tmp_path.resolve())
    assert (config.connect_timeout, config.read_timeout) == (5.0, 45.0)
    assert (config.download_deadline, config.download_min_rate, config.download_rate_window) == (120.0, 1_500_000, 2.5)
    assert ServerConfig.from_env({"LORA_ALLOW_PRIVATE_URLS": "off"}).allow_private_urls is False
    assert ServerConfig.from_env({"LORA_CACHE_DIR": "  "}).lora_cache_dir == ServerConfig().lora_cache_dir  # unset


@pytest.mark.parametrize(
    ("value", "mode"), [("auto", "auto"), ("AUTO", "auto"), ("on", "on"), ("1", "on"), ("Off", "off"), ("no", "off")]
)
def test_the_compile_mode_parses(value: str, mode: str) -> None:
    assert ServerConfig.from_env({"FLUX_COMPILE": value}).compile == mode


def test_the_compile_cache_folder_and_attention_backend_parse(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    environ = {"FLUX_COMPILE_CACHE_DIR": "cache/compiled", "FLUX_ATTENTION_BACKEND": "_NATIVE_CUDNN"}

    config = ServerConfig.from_env(environ)

    assert config.compile_cache_dir == tmp_path / "cache" / "compiled"  # absolute at setup, like every folder
    assert config.attention_backend == "_native_cudnn"  # diffusers' spelling
    assert ServerConfig.from_env({"FLUX_ATTENTION_BACKEND": "Auto"}).attention_backend == "auto"
    assert ServerConfig.from_env({"FLUX_ATTENTION_BACKEND": "flash"}).attention_backend == "flash"  # checked at setup


def test_an_unknown_attention_backend_lists_the_valid_names() -> None:
    with pytest.raises(ConfigError) as caught:
        ServerConfig.from_env({"FLUX_ATTENTION_BACKEND": "cudnn"})

    message = str(caught.value)
    assert message.startswith("FLUX_ATTENTION_BACKEND='cudnn' is not an attention backend; use auto or one of ")
    assert all(name in message for name in ("native", "_native_cudnn", "_native_flash", "_flash_3", "flash"))


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        ("WEIGHTS_DIR", "~no-such-user-here/weights", "is not a path"),
        ("LORA_LOCAL_DIRS", "/ok:bad\0dir", "is not a path"),
        ("LORA_CACHE_MAX_BYTES", "lots", "is not a size"),
        ("LORA_MAX_FILE_BYTES", "0", "must be more than 0 bytes"),
        ("LORA_MAX_FILE_BYTES", "2 PB", "is not a size"),
        ("LORA_CONNECT_TIMEOUT", "0", "is not a timeout"),
        ("LORA_READ_TIMEOUT", "soon", "is not a number of seconds"),
        ("LORA_CACHE_IN_USE_SECONDS", "-1", "is not a number of seconds"),
        ("LORA_CACHE_IN_USE_SECONDS", "inf", "is not a number of seconds"),
        ("DOWNLOAD_DEADLINE_SECONDS", "0", "is not a timeout"),
        ("DOWNLOAD_DEADLINE_SECONDS", "later", "is not a number of seconds"),
        ("DOWNLOAD_MIN_BYTES_PER_SECOND", "fast", "is not a rate; use bytes per second"),
        ("DOWNLOAD_MIN_BYTES_PER_SECOND", "0", "is not a rate; use bytes per second, more than 0"),
        ("DOWNLOAD_RATE_WINDOW_SECONDS", "-5", "is not a number of seconds"),
        ("LORA_ALLOW_PRIVATE_URLS", "maybe", "is neither on nor off"),
        ("HF_ENDPOINT", "ftp://mirror.example", "is not an http(s) URL"),
        ("CIVITAI_BASE_URL", "https://", "is not a site's base URL"),
        ("REPLICATE_BASE_URL", "https://replicate.com/?x=1", "is not a site's base URL"),
        ("FLUX_DEVICE", "gpu", "is not a torch device"),
        ("FLUX_DTYPE", "int8", "is not supported"),
        ("FLUX_COMPILE", "sometimes", "is not a compile mode; use auto, on or off."),
        ("FLUX_COMPILE_CACHE_DIR", "bad\0dir", "is not a path"),
        ("FLUX_ATTENTION_BACKEND", "fastest", "is not an attention backend; use auto or one of"),
    ],
)
def test_a_bad_value_of_each_kind_is_a_config_error_naming_its_variable(variable: str, value: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ServerConfig.from_env({variable: value})

    assert caught.value.variables == (variable,)
    assert str(caught.value).startswith(f"{variable}={value!r} {why}")
    assert isinstance(caught.value, ValueError)


def test_every_bad_value_is_reported_at_once_and_tokens_never_shown() -> None:
    environ = {"LORA_READ_TIMEOUT": "soon", "HF_TOKEN": "hf_TopSecret", "FLUX_DTYPE": "int8", "HF_ENDPOINT": "ftp://x"}

    with pytest.raises(ConfigError) as caught:
        ServerConfig.from_env(environ)

    assert caught.value.variables == ("FLUX_DTYPE", "HF_ENDPOINT", "LORA_READ_TIMEOUT")  # in the table's order
    assert str(caught.value).splitlines()[0] == "3 configuration variables have values the server cannot use:"
    assert "hf_TopSecret" not in str(caught.value)
    tokens = {"HF_TOKEN": "hf_TopSecret", "CIVITAI_API_TOKEN": "cv_TopSecret", "REPLICATE_API_TOKEN": "r8_TopSecret"}
    shown = repr(ServerConfig.from_env(tokens))
    assert [token for token in tokens.values() if token in shown] == []


def test_overrides_win_over_the_environment_and_are_not_parsed(tmp_path: Path) -> None:
    environ = {"LORA_CACHE_MAX_BYTES": "lots", "LORA_CACHE_DIR": "/elsewhere"}

    config = ServerConfig.from_env(environ, lora_cache_max_bytes=1000, lora_cache_dir=tmp_path)

    assert (config.lora_cache_max_bytes, config.lora_cache_dir) == (1000, tmp_path)
    with pytest.raises(TypeError):
        ServerConfig.from_env({}, no_such_setting=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lora_cache_max_bytes = 5  # type: ignore[misc]


def test_the_cache_in_use_window_is_read_from_the_environment(tmp_path: Path) -> None:
    """LORA_CACHE_IN_USE_SECONDS reaches the cache (its effect on eviction: tests/test_lora_cache.py)."""
    environ = {"LORA_CACHE_DIR": str(tmp_path), "LORA_CACHE_IN_USE_SECONDS": "2.5"}

    assert LoraFetcher(ServerConfig.from_env(environ)).cache.in_use_seconds == 2.5
    assert LoraFetcher(ServerConfig(lora_cache_dir=tmp_path)).cache.in_use_seconds == 60.0


def test_the_download_pace_is_read_from_the_environment(tmp_path: Path) -> None:
    """The DOWNLOAD_* settings reach the LoRA fetcher (their effect: tests/test_download_pace.py, test_faults.py)."""
    environ = {
        "LORA_CACHE_DIR": str(tmp_path),
        "DOWNLOAD_MIN_BYTES_PER_SECOND": "1kB",
        "DOWNLOAD_RATE_WINDOW_SECONDS": "2",
    }

    fetcher = LoraFetcher(ServerConfig.from_env({**environ, "DOWNLOAD_DEADLINE_SECONDS": "7"}))
    assert (fetcher.pace.deadline, fetcher.pace.min_rate, fetcher.pace.window) == (7.0, 1000, 2.0)


def test_the_readme_documents_every_variable() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration") :].split("\n## ", 1)[0]

    missing = [variable for variable in ServerConfig.variables() if f"`{variable}`" not in table]
    assert missing == []


def test_the_design_document_documents_every_variable() -> None:
    design = (REPO_ROOT / "docs" / "DESIGN.md").read_text()
    table = design[design.index("## Configuration") :].split("\n## ", 1)[0]

    missing = [variable for variable in ServerConfig.variables() if f"`{variable}`" not in table]
    assert missing == []
