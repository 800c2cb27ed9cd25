"""LoraFetcher against fake Replicate, Hugging Face, CivitAI and file servers on loopback: every source
form, what is sent (tokens, ranges), how failures read, and that only valid safetensors come out.

Real HTTP end to end (httpx2 and huggingface_hub are not mocked); LORA_ALLOW_PRIVATE_URLS=1 lets the
fetcher reach 127.0.0.1, except in the tests of the address policy itself."""

from __future__ import annotations

import base64
import io
import ipaddress
import logging
import pickle
import types
from pathlib import Path

import huggingface_hub.constants
import huggingface_hub.file_download
import pytest
import torch

from guarded_download import AddressPolicy, RetryPolicy
from guarded_download import transfer as guarded_transfer
from lora_loader import LoraError, LoraFetcher
from lora_loader.triggers import from_metadata, from_model_card, from_trainer_config
from serverconfig import ServerConfig
from testkit.fakes.hf_hub import FakeHub
from testkit.fakes.lora_servers import (
    FakeCivitai,
    FakeReplicate,
    FakeServer,
    FakeVersion,
    lora_bytes,
    make_tar,
    trainer_tar,
)
from testkit.helpers import digest

HF_TOKEN = "hf_LoraTokenForTheFakeHub0123456789"
CIVITAI_TOKEN = "civitai0SecretApiKey0123456789abcdef"
REPLICATE_TOKEN = "r8_ReplicateSecretToken0123456789abc"
VERSION = "5f3a8c2e9d1b4a6c8e0f2a4b6c8d0e1f3a5b7c9d1e3f5a7b9c1d3e5f7a9b1c3d"
FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)
LORA = lora_bytes(1)


@pytest.fixture
def hub(lora_sites) -> FakeHub:
    lora_sites.hub.reset()
    lora_sites.hub.tokens.add(HF_TOKEN)
    return lora_sites.hub


@pytest.fixture
def make_fetcher(tmp_path: Path, hub: FakeHub, civitai: FakeCivitai, replicate: FakeReplicate):
    """A fetcher on the fakes; keyword arguments override environment variables (None unsets one)."""

    def make(**overrides: str | None) -> LoraFetcher:
        environ = {
            "LORA_CACHE_DIR": str(tmp_path / "cache"),
            "LORA_ALLOW_PRIVATE_URLS": "1",
            "HF_ENDPOINT": hub.endpoint,
            "CIVITAI_BASE_URL": civitai.base_url,
            "REPLICATE_BASE_URL": replicate.base_url,
        }
        environ.update({k: v for k, v in overrides.items() if v is not None})
        for name in [k for k, v in overrides.items() if v is None]:
            environ.pop(name, None)
        return LoraFetcher(ServerConfig.from_env(environ), retry=FAST_RETRY)

    return make


@pytest.fixture
def no_hf_retry_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub waits 1 s before each resume attempt; the fake Hub needs no such courtesy."""
    monkeypatch.setattr(huggingface_hub.file_download, "time", types.SimpleNamespace(sleep=lambda _: None))


def data_uri(payload: bytes) -> str:
    return "data:application/octet-stream;base64," + base64.b64encode(payload).decode()


# -- Replicate ---------------------------------------------------------------------------------------


def test_replicate_model_and_version_forms_yield_the_trainers_lora(replicate: FakeReplicate, make_fetcher) -> None:
    replicate.add_model("fofr", "flux-mona-lisa", trainer_tar(LORA, "MNALSA"))
    replicate.add_model("fofr", "flux-mona-lisa", trainer_tar(lora_bytes(2), "OLDMNA"), version=VERSION)
    fetcher = make_fetcher()

    latest = fetcher.fetch("fofr/flux-mona-lisa")
    versioned = fetcher.fetch(f"https://replicate.com/fofr/flux-mona-lisa/versions/{VERSION}")

    assert digest(latest.path.read_bytes()) == digest(LORA) and latest.trigger_words == ("MNALSA",)
    assert digest(versioned.path.read_bytes()) == digest(lora_bytes(2)) and versioned.trigger_words == ("OLDMNA",)
    assert [r.path for r in replicate.site.requests] == [
        "/fofr/flux-mona-lisa/_weights",
        f"/fofr/flux-mona-lisa/versions/{VERSION}/_weights",
    ]
    # The other spellings are the same sources: cache hits.
    assert fetcher.fetch("https://replicate.com/fofr/flux-mona-lisa").key == latest.key
    assert fetcher.fetch(f"fofr/flux-mona-lisa/{VERSION}").key == versioned.key
    assert fetcher.fetch(f"replicate.com/fofr/flux-mona-lisa/versions/{VERSION}").key == versioned.key
    assert len(replicate.site.requests) == 2


def test_replicate_delivery_tar_url(replicate: FakeReplicate, make_fetcher) -> None:
    delivered = replicate.add_model("o", "m", trainer_tar(LORA))

    lora = make_fetcher().fetch(delivered)

    assert digest(lora.path.read_bytes()) == digest(LORA) and lora.trigger_words == ("TOK",)
    assert lora.source == delivered


def test_replicate_token_is_sent_as_bearer_to_replicate_only(replicate: FakeReplicate, make_fetcher) -> None:
    replicate.token = REPLICATE_TOKEN
    replicate.add_model("me", "private-lora", trainer_tar(LORA))
    source = "me/private-lora"

    with pytest.raises(LoraError, match="private model needs REPLICATE_API_TOKEN"):
        make_fetcher().fetch(source)
    with pytest.raises(LoraError, match="refused REPLICATE_API_TOKEN"):
        make_fetcher(REPLICATE_API_TOKEN="r8_wrong").fetch(source)
    lora = make_fetcher(REPLICATE_API_TOKEN=REPLICATE_TOKEN).fetch(source)

    assert digest(lora.path.read_bytes()) == digest(LORA)
    assert replicate.site.requests[-1].authorization == f"Bearer {REPLICATE_TOKEN}"
    assert all(r.authorization is None for r in replicate.delivery.requests)  # not forwarded off-origin


def test_replicate_unknown_model_says_what_to_check(make_fetcher) -> None:
    with pytest.raises(LoraError, match=r"no trained weights for nobody/nothing .*404.*REPLICATE_API_TOKEN"):
        make_fetcher().fetch("nobody/nothing")


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"a/lora.safetensors": LORA, "b/other.safetensors": LORA}, "holds 2 .safetensors files"),
        ({"output/config.yaml": b"x: 1", "output/captions/1.txt": b"hi"}, "holds no .safetensors file"),
        ({"../escape.safetensors": LORA}, "unsafe tar"),
        ({"/abs/lora.safetensors": LORA}, "unsafe tar"),
    ],
)
def test_bad_tars_are_refused(files: FakeServer, make_fetcher, members: dict, message: str) -> None:
    url = files.add_file("/weights.tar", make_tar(members))

    with pytest.raises(LoraError, match=message):
        make_fetcher().fetch(url)


def test_tar_links_are_refused_and_macos_metadata_is_ignored(files: FakeServer, make_fetcher) -> None:
    buffer = io.BytesIO()
    import tarfile

    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link = tarfile.TarInfo("lora.safetensors")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    url = files.add_file("/link.tar", buffer.getvalue())
    with pytest.raises(LoraError, match="is a link"):
        make_fetcher().fetch(url)

    url = files.add_file("/mac.tar", make_tar({"._lora.safetensors": b"\x00\x05junk", "lora.safetensors": LORA}))
    assert digest(make_fetcher().fetch(url).path.read_bytes()) == digest(LORA)


# -- Hugging Face ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    [
        "huggingface.co/{repo}",
        "https://huggingface.co/{repo}",
        "https://www.huggingface.co/{repo}",
        "huggingface.co/{repo}/blob/main/flux-tarot.safetensors",
        "https://huggingface.co/{repo}/resolve/main/flux-tarot.safetensors?download=true",
    ],
)
def test_hugging_face_forms(hub: FakeHub, make_fetcher, form: str) -> None:
    repo = "multimodalart/flux-tarot-v1"
    hub.add_repo(repo, {"flux-tarot.safetensors": LORA, "README.md": b"# tarot\n", "samples/1.png": b"png"})

    lora = make_fetcher().fetch(form.format(repo=repo))

    assert digest(lora.path.read_bytes()) == digest(LORA)
    assert hub.fetched(repo).count("flux-tarot.safetensors") == 1
    assert not any(r.authorized for r in hub.requests)  # no HF_TOKEN: anonymous


@pytest.mark.parametrize(
    ("repo_files", "chosen"),
    [
        # diffusers: the trainer's file wins over checkpoints and optimizer states
        (
            [
                "pytorch_lora_weights.safetensors",
                "checkpoint-500/pytorch_lora_weights.safetensors",
                "optimizer.safetensors",
            ],
            "pytorch_lora_weights.safetensors",
        ),
        # Replicate's trainer name wins over others
        (["lora.safetensors", "extra/other.safetensors"], "lora.safetensors"),
        # the only one at the top level
        (["style.safetensors", "old/style_v0.safetensors", "old/style_v1.safetensors"], "style.safetensors"),
        # the final save of a run among its numbered steps
        (
            ["my_lora.safetensors", "my_lora_000000500.safetensors", "my_lora_000001000.safetensors"],
            "my_lora.safetensors",
        ),
        (["ink-000004.safetensors", "ink-000008.safetensors", "ink.safetensors"], "ink.safetensors"),
    ],
)
def test_hugging_face_repo_file_rules(hub: FakeHub, make_fetcher, repo_files: list[str], chosen: str) -> None:
    contents = {name: lora_bytes(i + 10) for i, name in enumerate(repo_files)}
    hub.add_repo("someone/lora", contents)

    lora = make_fetcher().fetch("huggingface.co/someone/lora")

    assert digest(lora.path.read_bytes()) == digest(contents[chosen])
    assert hub.fetched("someone/lora") == [chosen]


def test_hugging_face_ambiguous_repo_lists_candidates_and_how_to_name_one(hub: FakeHub, make_fetcher) -> None:
    hub.add_repo("someone/pack", {"anime.safetensors": LORA, "photo.safetensors": LORA, "scheduler.safetensors": LORA})

    with pytest.raises(LoraError) as caught:
        make_fetcher().fetch("huggingface.co/someone/pack")

    message = str(caught.value)
    assert "2 .safetensors files" in message and "anime.safetensors, photo.safetensors" in message
    assert "huggingface.co/someone/pack/blob/main/anime.safetensors" in message
    assert hub.fetched("someone/pack") == []


def test_hugging_face_repo_without_safetensors(hub: FakeHub, make_fetcher) -> None:
    hub.add_repo("someone/old", {"lora.bin": b"\x80\x02pickle", "README.md": b"hi"})

    with pytest.raises(LoraError, match=r"no .safetensors LoRA file \(it has lora.bin; only .safetensors"):
        make_fetcher().fetch("huggingface.co/someone/old")


def test_hugging_face_access_errors_say_whether_hf_token_is_needed(hub: FakeHub, make_fetcher, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    hub.add_repo("corp/gated", {"lora.safetensors": LORA}, gated=True)
    hub.add_repo("corp/private", {"lora.safetensors": LORA}, private=True)
    hub.add_repo("corp/secret", {"lora.safetensors": LORA}, private=True, authorized_tokens=set())
    anonymous, authorized = make_fetcher(), make_fetcher(HF_TOKEN=HF_TOKEN)

    with pytest.raises(LoraError, match=r"corp/gated is gated: accept the licence at .*, then set HF_TOKEN"):
        anonymous.fetch("huggingface.co/corp/gated")
    with pytest.raises(LoraError, match=r"corp/private was not found.*if it is private, set HF_TOKEN"):
        anonymous.fetch("huggingface.co/corp/private")
    with pytest.raises(LoraError, match=r"corp/secret was not found at .*, or HF_TOKEN's account cannot read it"):
        authorized.fetch("huggingface.co/corp/secret")
    with pytest.raises(LoraError, match=r"corp/private has no file 'nope.safetensors'"):
        authorized.fetch("huggingface.co/corp/private/blob/main/nope.safetensors")
    with pytest.raises(LoraError, match=r"refused HF_TOKEN \(invalid or expired\)"):
        make_fetcher(HF_TOKEN="hf_NotAKnownToken").fetch("huggingface.co/corp/gated")

    assert digest(authorized.fetch("huggingface.co/corp/gated").path.read_bytes()) == digest(LORA)
    assert digest(authorized.fetch("huggingface.co/corp/private").path.read_bytes()) == digest(LORA)
    assert HF_TOKEN not in caplog.text


def test_hugging_face_offline_mode_is_explained(hub: FakeHub, make_fetcher, monkeypatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    with pytest.raises(LoraError, match="HF_HUB_OFFLINE is set.*local path"):
        make_fetcher().fetch("huggingface.co/someone/anything")


def test_hugging_face_model_card_instance_prompt_is_a_trigger_word(hub: FakeHub, make_fetcher) -> None:
    card = b"---\nbase_model: black-forest-labs/FLUX.1-dev\ninstance_prompt: in the style of TOK\n---\n# LoRA\n"
    hub.add_repo("someone/styled", {"lora.safetensors": LORA, "README.md": card})

    assert make_fetcher().fetch("huggingface.co/someone/styled").trigger_words == ("in the style of TOK",)


def test_hugging_face_dropped_connection_is_retried_within_the_call(
    hub: FakeHub, make_fetcher, no_hf_retry_wait, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    big = lora_bytes(3, padding=200_000)
    hub.add_repo("someone/big", {"lora.safetensors": big})
    fault = hub.drop_connection("someone/big", "lora.safetensors", after_bytes=50_000)

    lora = make_fetcher().fetch("huggingface.co/someone/big")

    # huggingface_hub resumes (or, below its 10 MB read size, restarts) on its own.
    assert fault.hits == 1 and digest(lora.path.read_bytes()) == digest(big)
    assert hub.fetched("someone/big") == ["lora.safetensors", "lora.safetensors"]
    # Its retry warning names the CDN URL; the signature in it is stripped.
    assert "Trying to resume" in caplog.text and "sig=" not in caplog.text


# -- CivitAI -----------------------------------------------------------------------------------------


def civitai_model(civitai: FakeCivitai) -> tuple[bytes, bytes]:
    new, old = lora_bytes(20), lora_bytes(21)
    civitai.add_model(
        735262,
        [
            FakeVersion(822300, new, trained_words=["ohwx style, vintage"]),
            FakeVersion(811111, old, trained_words=["oldword"]),
        ],
    )
    return new, old


def test_civitai_model_page_resolves_to_the_newest_version(civitai: FakeCivitai, make_fetcher) -> None:
    new, _ = civitai_model(civitai)

    lora = make_fetcher().fetch("https://civitai.com/models/735262/some-slug")

    assert digest(lora.path.read_bytes()) == digest(new)
    assert lora.trigger_words == ("ohwx style", "vintage")
    assert [r.path for r in civitai.site.requests] == ["/api/v1/models/735262", "/api/download/models/822300"]
    assert "type=Model&format=SafeTensor" in civitai.site.requests[-1].query
    # The 307 was followed to signed storage on another host, which got its signature.
    assert [r.status for r in civitai.storage.requests] == [200]
    assert "sig=" in civitai.storage.requests[0].query


def test_civitai_model_version_id_query_picks_that_version(civitai: FakeCivitai, make_fetcher) -> None:
    _, old = civitai_model(civitai)

    lora = make_fetcher().fetch("civitai.com/models/735262?modelVersionId=811111")

    assert digest(lora.path.read_bytes()) == digest(old) and lora.trigger_words == ("oldword",)
    with pytest.raises(LoraError, match=r"model 735262 has no version 999 \(its versions: 822300, 811111\)"):
        make_fetcher().fetch("civitai.com/models/735262?modelVersionId=999")


def test_civitai_download_link_uses_the_version_id(civitai: FakeCivitai, make_fetcher) -> None:
    _, old = civitai_model(civitai)

    lora = make_fetcher().fetch("https://civitai.com/api/download/models/811111")

    assert digest(lora.path.read_bytes()) == digest(old) and lora.trigger_words == ("oldword",)
    assert [r.path for r in civitai.site.requests] == ["/api/v1/model-versions/811111", "/api/download/models/811111"]


def test_civitai_404s_say_which_id_to_use(civitai: FakeCivitai, make_fetcher) -> None:
    civitai_model(civitai)
    fetcher = make_fetcher()

    # A version id pasted into a page URL, and a model id pasted into a download link.
    with pytest.raises(LoraError, match=r"no model with id 822300.*use civitai.com/api/download/models/822300"):
        fetcher.fetch("civitai.com/models/822300")
    with pytest.raises(LoraError, match=r"no model version 735262.*use civitai.com/models/735262 instead"):
        fetcher.fetch("civitai.com/api/download/models/735262")


def test_civitai_token_is_sent_and_401_explained(civitai: FakeCivitai, make_fetcher, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    civitai.token = CIVITAI_TOKEN
    civitai.add_model(5, [FakeVersion(50, LORA)])
    source = "civitai.com/models/5"

    with pytest.raises(LoraError, match=r"requires an API token.*set CIVITAI_API_TOKEN"):
        make_fetcher().fetch(source)
    with pytest.raises(LoraError, match=r"refused CIVITAI_API_TOKEN"):
        make_fetcher(CIVITAI_API_TOKEN="wrong").fetch(source)
    lora = make_fetcher(CIVITAI_API_TOKEN=CIVITAI_TOKEN).fetch(source)

    assert digest(lora.path.read_bytes()) == digest(LORA)
    assert [r.authorization for r in civitai.site.requests[-2:]] == [f"Bearer {CIVITAI_TOKEN}"] * 2
    assert [r.authorization for r in civitai.storage.requests] == [None]  # S3 would refuse it
    assert CIVITAI_TOKEN not in caplog.text


def test_a_civitai_token_in_the_url_is_used_never_shown_and_scopes_the_cache(
    civitai: FakeCivitai, make_fetcher, caplog
) -> None:
    """Download links copied from CivitAI carry the user's key (`?token=`): a hosted model's caller cannot
    set CIVITAI_API_TOKEN, so the link's token is sent as the bearer token instead."""
    caplog.set_level(logging.DEBUG)
    civitai.token = CIVITAI_TOKEN
    civitai.add_model(5, [FakeVersion(50, LORA)])
    fetcher = make_fetcher()

    lora = fetcher.fetch(f"https://civitai.com/api/download/models/50?type=Model&token={CIVITAI_TOKEN}")
    assert digest(lora.path.read_bytes()) == digest(LORA)
    assert civitai.site.requests[-1].authorization == f"Bearer {CIVITAI_TOKEN}"
    assert all(CIVITAI_TOKEN not in r.query for r in civitai.site.requests), "sent as a header, not in URLs"
    with pytest.raises(LoraError, match=r"refused the token in the URL"):
        fetcher.fetch("https://civitai.com/api/download/models/50?token=wrong")
    with pytest.raises(LoraError, match=r"requires an API token"):  # the cached file is not for token-less calls
        fetcher.fetch("https://civitai.com/api/download/models/50?type=Model")
    for text in (caplog.text, lora.source, lora.key, str(lora.path)):
        assert CIVITAI_TOKEN not in text


def test_civitai_warns_about_non_flux_models_and_pickles(civitai: FakeCivitai, make_fetcher, caplog) -> None:
    civitai.add_model(7, [FakeVersion(70, LORA, base_model="SDXL 1.0")])
    civitai.add_model(8, [FakeVersion(80, LORA, pickle_only=True)])

    with caplog.at_level(logging.WARNING):
        make_fetcher().fetch("civitai.com/models/7")
    assert "trained for SDXL 1.0, not FLUX.1" in caplog.text
    with pytest.raises(LoraError, match=r"no SafeTensor model file \(it has .*lora.pt \(PickleTensor\)"):
        make_fetcher().fetch("civitai.com/models/8")


# -- any URL, data: URIs, local paths ------------------------------------------------------------------


def test_signed_url_is_fetched_and_its_query_never_logged(files: FakeServer, make_fetcher, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    files.add_file("/bucket/style.safetensors", LORA, signature="S3cr3tSig")
    url = files.url("/bucket/style.safetensors?sig=S3cr3tSig&X-Amz-Credential=AKIAFAKE")

    lora = make_fetcher().fetch(url)

    assert digest(lora.path.read_bytes()) == digest(LORA) and "S3cr3tSig" not in lora.source
    assert "S3cr3tSig" not in caplog.text and "AKIAFAKE" not in caplog.text
    assert "downloaded" in caplog.text and "MB/s" in caplog.text


def html_page() -> bytes:
    return b"<!DOCTYPE html>\n<html><head><title>Log in</title></head><body>Sign in to continue</body></html>"


def zip_checkpoint() -> bytes:
    buffer = io.BytesIO()
    torch.save({"lora_down.weight": torch.zeros(2, 2)}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (html_page(), r"got an HTML page \(the first bytes look like <!DOCTYPE html>"),
        (b'{"error": "Model is in early access"}', r"got a JSON document.*early access"),
        (zip_checkpoint(), r"got a PyTorch pickle/zip checkpoint .*only .safetensors LoRAs are loaded"),
        (pickle.dumps({"a": 1}, protocol=4), r"got a PyTorch pickle checkpoint"),
        (b"", r"is an empty file \(0 bytes\)"),
        (make_tar({"lora.safetensors": LORA}), r"got a tar archive where a .safetensors file was expected"),
        (LORA[:-10], r"not a valid .safetensors file \(.*truncated"),
        (b"\x05\x00\x00\x00\x00\x00\x00\x00[1,2]" + b"\x00" * 50, r"header is not a JSON object"),
    ],
)
def test_non_safetensors_downloads_are_rejected_saying_what_arrived(
    files: FakeServer, make_fetcher, body: bytes, message: str
) -> None:
    url = files.add_file("/lora.safetensors", body)
    fetcher = make_fetcher()

    with pytest.raises(LoraError, match=message):
        fetcher.fetch(url)
    assert list((fetcher.cache.root / "entries").iterdir()) == []


def test_url_status_errors(files: FakeServer, make_fetcher) -> None:
    files.add_json("/private.safetensors", {"error": "no"}, status=403)

    with pytest.raises(LoraError, match=r"Nothing found at http://127.0.0.1:\d+/missing.safetensors \(HTTP 404\)"):
        make_fetcher().fetch(files.url("/missing.safetensors"))
    with pytest.raises(LoraError, match=r"refused the download \(HTTP 403\): the URL needs credentials"):
        make_fetcher().fetch(files.url("/private.safetensors"))


def test_data_uris_of_a_safetensors_file_or_of_a_tar(make_fetcher) -> None:
    fetcher = make_fetcher()

    assert digest(fetcher.fetch(data_uri(LORA)).path.read_bytes()) == digest(LORA)
    from_tar = fetcher.fetch(data_uri(trainer_tar(lora_bytes(4), "DATATOK")))
    assert digest(from_tar.path.read_bytes()) == digest(lora_bytes(4)) and from_tar.trigger_words == ("DATATOK",)
    with pytest.raises(LoraError, match="got an HTML page"):
        fetcher.fetch(data_uri(html_page()))


def test_local_files_folders_and_tars(tmp_path: Path, make_fetcher, monkeypatch) -> None:
    folder = tmp_path / "loras" / "style"
    folder.mkdir(parents=True)
    (folder / "style.safetensors").write_bytes(LORA)
    (folder / "README.md").write_text("hi")
    (tmp_path / "pack").mkdir()
    (tmp_path / "pack" / "a.safetensors").write_bytes(LORA)
    (tmp_path / "pack" / "b.safetensors").write_bytes(LORA)
    (tmp_path / "trained.tar").write_bytes(trainer_tar(lora_bytes(5), "LOCALTOK"))
    monkeypatch.chdir(tmp_path)
    fetcher = make_fetcher(LORA_LOCAL_DIRS=str(tmp_path))

    direct = fetcher.fetch(str(folder / "style.safetensors"))
    assert direct.path == folder / "style.safetensors"  # used in place, not copied
    assert direct.key == f"local-{direct.sha256[:24]}"
    assert fetcher.fetch("./loras/style").path == direct.path
    assert fetcher.fetch(f"file://{folder}/style.safetensors").sha256 == direct.sha256
    unpacked = fetcher.fetch("./trained.tar")
    assert digest(unpacked.path.read_bytes()) == digest(lora_bytes(5)) and unpacked.trigger_words == ("LOCALTOK",)
    with pytest.raises(LoraError, match=r"holds 2 .safetensors files.*e.g. .*/pack/a.safetensors"):
        fetcher.fetch("./pack")
    with pytest.raises(LoraError, match="There is no file or folder at"):
        fetcher.fetch("./nowhere/lora.safetensors")


# -- downloads: resume, retry, address policy ---------------------------------------------------------


def test_dropped_connection_is_resumed_with_range_and_if_range(files: FakeServer, make_fetcher) -> None:
    big = lora_bytes(6, padding=400_000)
    url = files.add_file("/big.safetensors", big)
    fault = files.drop_connection("/big.safetensors", after_bytes=150_000)

    lora = make_fetcher().fetch(url)

    assert fault.hits == 1 and digest(lora.path.read_bytes()) == digest(big)
    first, second = files.gets("/big.safetensors")
    assert first.range is None and second.range == "bytes=150000-"
    assert second.if_range == files.routes["/big.safetensors"].etag and second.status == 206


def test_server_without_ranges_restarts_from_the_start(files: FakeServer, make_fetcher) -> None:
    big = lora_bytes(7, padding=300_000)
    url = files.add_file("/plain.safetensors", big, ranges=False)
    files.drop_connection("/plain.safetensors", after_bytes=100_000)

    lora = make_fetcher().fetch(url)

    assert digest(lora.path.read_bytes()) == digest(big)
    assert [r.range for r in files.gets("/plain.safetensors")] == [None, None]


def test_server_errors_are_retried_with_backoff(files: FakeServer, make_fetcher) -> None:
    url = files.add_file("/busy.safetensors", LORA)
    files.fail("/busy.safetensors", 503, times=2)

    assert digest(make_fetcher().fetch(url).path.read_bytes()) == digest(LORA)
    assert [r.status for r in files.gets("/busy.safetensors")] == [503, 503, 200]


def test_big_downloads_log_progress_by_tenths(files: FakeServer, make_fetcher, caplog, monkeypatch) -> None:
    monkeypatch.setattr(guarded_transfer, "PROGRESS_MIN_BYTES", 1)
    data = lora_bytes(11, padding=2_000_000)
    url = files.add_file("/progress.safetensors", data)

    with caplog.at_level(logging.INFO, logger="guarded_download"):
        make_fetcher().fetch(url)

    lines = [r.getMessage() for r in caplog.records if r.name == "guarded_download.transfer"]
    assert lines[0].endswith("downloading 2.0 MB")
    assert 3 <= sum(line.endswith("%)") for line in lines) <= 10
    assert "downloaded 2.0 MB in" in lines[-1] and lines[-1].endswith("MB/s)")


def test_outage_gives_up_after_bounded_retries_and_leaves_nothing(files: FakeServer, make_fetcher) -> None:
    url = files.add_file("/flaky.safetensors", lora_bytes(8, padding=100_000))
    files.drop_connection("/flaky.safetensors", after_bytes=10_000, times=None)
    fetcher = make_fetcher()

    with pytest.raises(LoraError, match=r"Could not download .*flaky.safetensors: 4 attempts failed"):
        fetcher.fetch(url)
    # One full try, then resumes that made no progress until FAST_RETRY's 3 attempts ran out.
    assert len(files.gets("/flaky.safetensors")) == 4
    assert list((fetcher.cache.root / "entries").iterdir()) == []
    assert list((fetcher.cache.root / "tmp").iterdir()) == []


def test_private_addresses_are_refused_unless_allowed(files: FakeServer, tmp_path: Path) -> None:
    url = files.add_file("/lora.safetensors", LORA)
    fetcher = LoraFetcher(ServerConfig(lora_cache_dir=tmp_path / "cache"), retry=FAST_RETRY)

    with pytest.raises(LoraError, match=r"Refusing to download a LoRA from 127.0.0.1: it is a loopback address"):
        fetcher.fetch(url)
    assert files.requests == []


def test_every_redirect_is_checked_against_the_address_policy(files: FakeServer, tmp_path: Path) -> None:
    files.add_redirect("/lora.safetensors", "http://169.254.169.254/latest/meta-data/iam/credentials")
    # 127.0.0.1 stands in for a public host here; the redirect target gets the real rule.
    policy = AddressPolicy(trusted_networks=(ipaddress.ip_network("127.0.0.1/32"),), subject="a LoRA")
    fetcher = LoraFetcher(ServerConfig(lora_cache_dir=tmp_path / "cache"), retry=FAST_RETRY, policy=policy)

    with pytest.raises(LoraError, match=r"Refusing to download a LoRA from 169.254.169.254: it is a link-local"):
        fetcher.fetch(files.url("/lora.safetensors"))
    assert [r.path for r in files.requests] == ["/lora.safetensors"]


# -- trigger words ---------------------------------------------------------------------------------------


def test_trigger_words_from_safetensors_metadata(files: FakeServer, make_fetcher) -> None:
    kohya = {"ss_tag_frequency": '{"10_ohwx": {"ohwx": 30, "woman": 30, "smiling": 4}}', "ss_network_dim": "16"}
    url = files.add_file("/kohya.safetensors", lora_bytes(9, metadata=kohya))

    assert make_fetcher().fetch(url).trigger_words == ("ohwx", "woman")
    assert from_metadata({"modelspec.trigger_phrase": "pixel art, 8bit"}) == ("pixel art", "8bit")
    assert from_metadata({"ss_trigger_words": '["zxc", "qwe"]', "ss_tag_frequency": '{"a": {"tag": 3}}'}) == (
        "zxc",
        "qwe",
    )
    ai_toolkit = {"name": "run", "config": '{"config": {"process": [{"trigger_word": "p3rs0n"}]}}'}
    assert from_metadata(ai_toolkit) == ("p3rs0n",)
    assert from_metadata({"format": "pt"}) == ()
    assert from_trainer_config("config:\n  process:\n    - trigger_word: TOK\n") == ("TOK",)
    assert from_trainer_config("not: [valid") == ()
    assert from_model_card("---\ninstance_prompt: a photo of sks dog\n---\n") == ("a photo of sks dog",)
