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


# -- URLs no request could use, and paths the Hub would resolve elsewhere (issue 11) -------------------------------


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("http://[::1/x.safetensors", "its host is not a valid IPv6 address in brackets"),
        ("http://[::1/x", "its host is not a valid IPv6 address in brackets"),
        ("http://[fe80::zz]/x.safetensors", "is not a valid IPv6 address"),
        ("http://host:abc/x.safetensors", "its port 'abc' is not a number from 1 to 65535"),
        ("http://host:abc/x", "its port 'abc' is not a number from 1 to 65535"),
        ("http://host:99999/x.safetensors", "its port '99999' is not a number from 1 to 65535"),
        ("http://xn--/x.safetensors", "its host 'xn--' is not a valid host name"),
        ("http://xn--/x", "its host 'xn--' is not a valid host name"),
        ("http://xn--abc.example.com/x.safetensors", "('xn--abc' is not valid punycode)"),
        ("http://0177.0.0.1/x.safetensors", "its host '0177.0.0.1' is not a valid IPv4 address"),
        ("http://0177.0.0.1/x", "its host '0177.0.0.1' is not a valid IPv4 address"),
        ("http://256.0.0.1/x", "its host '256.0.0.1' is not a valid IPv4 address"),
        ("http://0x7f.0.0.1/x.safetensors", "is not a valid IPv4 address"),
        ("http://1.2.3/x.safetensors", "is not a valid IPv4 address"),
        ("http://-bad-.example.com/x.safetensors", "is not a valid host name"),
        ("http://a..b.com/x.safetensors", "is not a valid host name"),
        ("http://ex%41mple.com/x.safetensors", "is not a valid host name"),
        ("https:///x.safetensors", "it has no host"),
    ],
)
def test_a_url_no_request_could_use_is_one_clear_error_before_anything_is_sent(text: str, why: str) -> None:
    with pytest.raises(LoraError) as caught:
        parse_source(text)

    message = str(caught.value)
    assert message.startswith("Cannot use '") and why in message and message.endswith(". Check the URL.")
    assert "Accepted forms" not in message and "\n" not in message  # one sentence, not the whole catalogue


def test_good_hosts_still_parse() -> None:
    for text in (
        "https://[2606:4700::6810:84e5]:8443/x.safetensors",
        "https://93.184.216.34/x.safetensors",
        "https://münchen.example/x.safetensors",
        "https://xn--mnchen-3ya.example/x.safetensors",
        "https://my_bucket.s3.example.com/x.safetensors",
        "HTTPS://Example.COM/x.safetensors",
    ):
        assert isinstance(parse_source(text), HttpFile), text


@pytest.mark.parametrize(
    "text",
    [
        "huggingface.co/bob/trav/blob/main/%2e%2e/%2e%2e/x.safetensors",
        "huggingface.co/bob/trav/resolve/main/sub/%2E%2E/x.safetensors",
        "huggingface.co/bob/trav/blob/main/./x.safetensors",
        "huggingface.co/bob/trav/blob/main/a%2F..%2Fx.safetensors",
        "huggingface.co/bob/trav/blob/%2e%2e/x.safetensors",
        "huggingface.co/bob/trav/tree/%2e%2e",
        "huggingface.co/bob/trav/%2e%2e/x.safetensors",
    ],
)
def test_hugging_face_names_with_dot_segments_are_refused(text: str) -> None:
    """The Hub (and huggingface_hub, with a raw ValueError) would resolve them to another path than the one named,
    and the token would go with the request."""
    with pytest.raises(LoraError, match=r"cannot have '\.', '\.\.' or empty segments"):
        parse_source(text)


def test_url_userinfo_is_a_credential_never_shown_nor_in_the_identity() -> None:
    private = parse_source("http://alice:SECRET@files.example.com/private.safetensors")
    bare = parse_source("alice:SECRET@files.example.com/private.safetensors")  # typed without the scheme
    plain = parse_source("http://files.example.com/private.safetensors")

    assert isinstance(private, HttpFile) and isinstance(bare, HttpFile)
    assert private.credentials == bare.credentials == "alice:SECRET" and plain.credentials is None
    assert private.identity == plain.identity  # same file; the fetcher scopes the key by the credential
    assert "SECRET" not in private.display + private.identity + repr(private)
    with pytest.raises(LoraError) as caught:
        parse_source("alice:SECRET@files.example.com/private.ckpt")
    assert "SECRET" not in str(caught.value)
