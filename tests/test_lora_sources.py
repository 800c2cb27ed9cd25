"""lora_loader.sources and the address policy: every accepted LoRA string parses to the right source, secrets
stay out of what is shown and keyed, and everything else gets one error that lists the accepted forms.

Pure parsing: no server, no file system (local paths are parsed, not checked)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from guarded_download import AddressPolicy, AddressRefused
from lora_loader import LoraError
from lora_loader.sources import (
    CivitaiModel,
    CivitaiVersion,
    DataUri,
    HttpFile,
    HuggingFaceFile,
    LocalPath,
    ReplicateModel,
    parse_source,
)

VERSION = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fofr/flux-mona-lisa", ReplicateModel("fofr", "flux-mona-lisa")),
        (f"fofr/flux-mona-lisa/{VERSION}", ReplicateModel("fofr", "flux-mona-lisa", VERSION)),
        (f"fofr/flux-mona-lisa/versions/{VERSION}", ReplicateModel("fofr", "flux-mona-lisa", VERSION)),
        ("https://replicate.com/fofr/flux-mona-lisa", ReplicateModel("fofr", "flux-mona-lisa")),
        ("replicate.com/fofr/flux-mona-lisa", ReplicateModel("fofr", "flux-mona-lisa")),
        (
            f"https://www.replicate.com/fofr/flux-mona-lisa/versions/{VERSION}",
            ReplicateModel("fofr", "flux-mona-lisa", VERSION),
        ),
        ("  fofr/flux_80s.cyberpunk  ", ReplicateModel("fofr", "flux_80s.cyberpunk")),
    ],
)
def test_replicate_forms(text: str, expected: ReplicateModel) -> None:
    assert parse_source(text) == expected


def test_replicate_weights_urls_map_onto_the_base_url() -> None:
    assert ReplicateModel("o", "m").weights_url("http://127.0.0.1:9") == "http://127.0.0.1:9/o/m/_weights"
    versioned = ReplicateModel("o", "m", "abc").weights_url("https://replicate.com")
    assert versioned == "https://replicate.com/o/m/versions/abc/_weights"


@pytest.mark.parametrize(
    "text",
    [
        "https://replicate.delivery/pbxt/abc123/trained_model.tar",
        "replicate.delivery/pbxt/abc123/trained_model.tar",
        "https://example.com/any/archive.tar?X-Amz-Signature=secret",
    ],
)
def test_tar_urls_are_archives(text: str) -> None:
    source = parse_source(text)
    assert isinstance(source, HttpFile) and source.archive


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("huggingface.co/alvdansen/frosting_lane_flux", HuggingFaceFile("alvdansen/frosting_lane_flux")),
        ("https://huggingface.co/alvdansen/frosting_lane_flux", HuggingFaceFile("alvdansen/frosting_lane_flux")),
        ("https://www.huggingface.co/o/r/", HuggingFaceFile("o/r")),
        ("www.huggingface.co/o/r", HuggingFaceFile("o/r")),
        ("hf.co/o/r", HuggingFaceFile("o/r")),
        ("huggingface.co/o/r/tree/dev", HuggingFaceFile("o/r", "dev")),
        ("huggingface.co/o/r/blob/main/lora.safetensors", HuggingFaceFile("o/r", "main", "lora.safetensors")),
        (
            "https://huggingface.co/o/r/resolve/v2/sub/x.safetensors?download=true",
            HuggingFaceFile("o/r", "v2", "sub/x.safetensors"),
        ),
        ("huggingface.co/o/r/x.safetensors", HuggingFaceFile("o/r", "main", "x.safetensors")),
    ],
)
def test_hugging_face_forms(text: str, expected: HuggingFaceFile) -> None:
    assert parse_source(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("civitai.com/models/735262", CivitaiModel(735262)),
        ("https://civitai.com/models/735262/flux-lora-slug", CivitaiModel(735262)),
        ("https://civitai.com/models/735262/slug?modelVersionId=822300", CivitaiModel(735262, 822300)),
        ("www.civitai.com/models/735262?modelVersionId=822300", CivitaiModel(735262, 822300)),
        ("https://civitai.com/api/download/models/822300", CivitaiVersion(822300)),
        (
            "https://civitai.com/api/download/models/822300?type=Model&format=SafeTensor&token=SECRET",
            CivitaiVersion(822300, (("type", "Model"), ("format", "SafeTensor")), token="SECRET"),
        ),
    ],
)
def test_civitai_forms(text: str, expected) -> None:
    source = parse_source(text)
    assert source == expected
    assert "SECRET" not in source.display + source.identity + repr(source)


def test_model_and_version_ids_are_different_identities() -> None:
    assert parse_source("civitai.com/models/1").identity != parse_source("civitai.com/api/download/models/1").identity
    assert (
        parse_source("civitai.com/models/1").identity != parse_source("civitai.com/models/1?modelVersionId=2").identity
    )


def test_signed_url_query_is_never_shown_but_keys_the_entry() -> None:
    signed = "https://user:pw@cdn.example.com/loras/x.safetensors?X-Amz-Signature=SECRET1&X-Amz-Credential=KEY"
    other = "https://cdn.example.com/loras/x.safetensors?X-Amz-Signature=SECRET2&X-Amz-Credential=KEY"
    source = parse_source(signed)
    assert isinstance(source, HttpFile) and not source.archive
    assert source.display == "https://cdn.example.com/loras/x.safetensors?…"
    for text in (source.display, source.identity, repr(source)):
        assert "SECRET" not in text and "KEY" not in text and "pw" not in text
    assert source.identity != parse_source(other).identity
    assert source.identity != parse_source("https://cdn.example.com/loras/x.safetensors").identity


def test_data_uris_decode_and_show_no_payload() -> None:
    payload = b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b"x" * 100
    source = parse_source("data:application/octet-stream;base64," + base64.b64encode(payload).decode())
    assert source == DataUri(payload, "application/octet-stream")
    assert "eHh4" not in source.display and str(len(payload)) in source.display
    with pytest.raises(LoraError, match="base64"):
        parse_source("data:application/octet-stream,rawtext")
    with pytest.raises(LoraError, match="not valid base64"):
        parse_source("data:;base64,@@@")


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("/srv/loras/style.safetensors", Path("/srv/loras/style.safetensors")),
        ("./loras/mine", Path("loras/mine")),
        ("../shared/lora.tar", Path("../shared/lora.tar")),
        ("file:///srv/loras/my%20lora.safetensors", Path("/srv/loras/my lora.safetensors")),
        ("mine.safetensors", Path("mine.safetensors")),
        ("loras/mine.safetensors", Path("loras/mine.safetensors")),
        ("~/lora.safetensors", Path("~/lora.safetensors").expanduser()),
    ],
)
def test_local_paths(text: str, path: Path) -> None:
    assert parse_source(text) == LocalPath(path)


def test_a_url_typed_without_its_scheme_is_a_url_not_a_local_path() -> None:
    source = parse_source("example.com/loras/style.safetensors?sig=1")
    assert isinstance(source, HttpFile) and source.display == "https://example.com/loras/style.safetensors?…"


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("", "empty"),
        ("just-a-word", "Accepted forms"),
        ("a/b/c/d/e", "Accepted forms"),
        ("ftp://example.com/x.safetensors", "Accepted forms"),
        ("https://example.com/lora.ckpt?token=SECRET", "must end in .safetensors"),
        ("a/b/c/d/e?X-Amz-Signature=SECRET", "Accepted forms"),  # the query is not echoed either
        ("huggingface.co/only-owner", "huggingface.co/<owner>/<repo>"),
        ("huggingface.co/o/r/blob/main/model.bin", "Only .safetensors"),
        ("huggingface.co/datasets/o/r", "not datasets"),
        ("civitai.com/models/abc", "civitai.com/models/<model id>"),
        ("civitai.com/models/1?modelVersionId=x", "modelVersionId must be a number"),
        ("civitai.com/user/someone", "civitai.com/models/<model id>"),
    ],
)
def test_anything_else_is_one_clear_error(text: str, hint: str) -> None:
    with pytest.raises(LoraError, match=hint) as caught:
        parse_source(text)
    message = str(caught.value)
    assert "SECRET" not in message
    if hint != "empty":
        assert "Hugging Face" in message and "CivitAI" in message and "Replicate" in message and "data:" in message


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("192.168.0.10", False),
        ("169.254.169.254", False),
        ("[::1]", False),
        ("[::ffff:127.0.0.1]", False),
        ("100.64.0.1", False),
        ("metadata.google.internal", False),
        ("93.184.216.34", True),
        ("cdn.example.com", True),
        ("internal.example.com", False),
    ],
)
def test_address_policy(host: str, allowed: bool) -> None:
    fake_dns = {"cdn.example.com": ["93.184.216.34"], "internal.example.com": ["93.184.216.34", "10.0.0.5"]}
    policy = AddressPolicy(resolver=lambda name, port: fake_dns[name], subject="a LoRA")
    if allowed:
        policy.check("https", host, None)
    else:
        with pytest.raises(AddressRefused, match="Refusing to download a LoRA from .*: it is "):
            policy.check("https", host, None)
    AddressPolicy(allow_private=True).check("http", host, 80)  # no resolution at all
