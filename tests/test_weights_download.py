"""weights.download against a fake Hugging Face Hub on loopback: what is fetched, what is not, and how
failures read to the user.

The fake repos mimic the real ones' layout with tiny files, including the root single-file checkpoints
(`flux1-dev.safetensors`, `ae.safetensors`) that must never be requested.
"""

from __future__ import annotations

import json
import logging
import random
import types
from pathlib import Path

import huggingface_hub.file_download
import pytest

from serverconfig import ServerConfig
from testkit.fakes.core import free_port
from testkit.fakes.hf_hub import FakeHub
from weights.download import STAGING_DIR, WeightsDownloadError, ensure_weights
from weights.layout import ALL_FOLDERS, FLUX_DEV, FLUX_SCHNELL, NSFW_CLASSIFIER, SAFETY_CHECKER, WeightsFolder

GOOD_TOKEN = "hf_GoodTokenForTheFakeHub0123456789"
WRONG_TOKEN = "hf_WrongTokenTheFakeHubRefuses98765"
BIG_FILE = "transformer/diffusion_pytorch_model.safetensors"


def _blob(name: str, size: int) -> bytes:
    return random.Random(name).randbytes(size)


def _config(**values: object) -> bytes:
    return json.dumps(values).encode()


def _pipeline_files(name: str) -> dict[str, bytes]:
    return {
        "model_index.json": _config(_class_name="FluxPipeline", name=name),
        "scheduler/scheduler_config.json": _config(_class_name="FlowMatchEulerDiscreteScheduler"),
        "transformer/config.json": _config(_class_name="FluxTransformer2DModel"),
        BIG_FILE: _blob(f"{name}/transformer", 64 * 1024),
        "text_encoder/config.json": _config(model_type="clip_text_model"),
        "text_encoder/model.safetensors": _blob(f"{name}/te", 4096),
        "vae/config.json": _config(_class_name="AutoencoderKL"),
        "vae/diffusion_pytorch_model.safetensors": _blob(f"{name}/vae", 8192),
        "README.md": b"# fake\n",
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        "ae.safetensors": _blob(f"{name}/ae", 2048),
    }


# Per repo: every file it holds. The expected download is derived from layout.allow_patterns.
REPOS: dict[WeightsFolder, dict[str, bytes]] = {
    FLUX_DEV: {
        **_pipeline_files("dev"),
        "flux1-dev.safetensors": _blob("dev/single", 4096),
        "dev_grid.jpg": b"\xff\xd8fake",
        "text_encoder_2/config.json": _config(model_type="t5"),
        "text_encoder_2/model-00001-of-00002.safetensors": _blob("dev/t5-1", 4096),
        "text_encoder_2/model-00002-of-00002.safetensors": _blob("dev/t5-2", 4096),
        "text_encoder_2/model.safetensors.index.json": _config(weight_map={}),
        "tokenizer/tokenizer_config.json": _config(model_max_length=77),
        "tokenizer/vocab.json": _config(a=0),
        "tokenizer_2/tokenizer_config.json": _config(model_max_length=512),
        "tokenizer_2/spiece.model": _blob("dev/spiece", 1024),
    },
    FLUX_SCHNELL: {**_pipeline_files("schnell"), "flux1-schnell.safetensors": _blob("schnell/single", 4096)},
    SAFETY_CHECKER: {
        "config.json": _config(model_type="clip"),
        "preprocessor_config.json": _config(crop_size=224),
        "model.safetensors": _blob("safety", 4096),
        "pytorch_model.bin": _blob("safety/bin", 4096),
    },
    NSFW_CLASSIFIER: {
        "config.json": _config(model_type="vit"),
        "preprocessor_config.json": _config(size=224),
        "model.safetensors": _blob("nsfw", 4096),
        "pytorch_model.bin": _blob("nsfw/bin", 4096),
    },
}

NEVER_FETCHED = {"flux1-dev.safetensors", "flux1-schnell.safetensors", "ae.safetensors", "pytorch_model.bin"}


def expected_files(folder: WeightsFolder) -> dict[str, bytes]:
    from huggingface_hub.utils import filter_repo_objects

    names = filter_repo_objects(REPOS[folder], allow_patterns=list(folder.allow_patterns))
    return {name: REPOS[folder][name] for name in names}


def configured(weights_dir: Path, token: str | None = None, endpoint: str | None = None) -> ServerConfig:
    """What ensure_weights is handed: these settings, the rest at their defaults (the environment unread)."""
    hub = {"hf_endpoint": endpoint} if endpoint else {}
    return ServerConfig(weights_dir=weights_dir, hf_token=token, device="cpu", **hub)


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_TOKEN", "HF_ENDPOINT", "WEIGHTS_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def no_retry_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub waits 1 s before each resume attempt; the fake server needs no such courtesy."""
    monkeypatch.setattr(huggingface_hub.file_download, "time", types.SimpleNamespace(sleep=lambda _: None))


@pytest.fixture
def hub(tmp_path: Path):
    with FakeHub() as hub:
        hub.tokens.add(GOOD_TOKEN)
        for folder, files in REPOS.items():
            source = tmp_path / "repos" / folder.name
            for name, data in files.items():
                (source / name).parent.mkdir(parents=True, exist_ok=True)
                (source / name).write_bytes(data)
            hub.add_repo(folder.repo_id, source, gated=folder.gated)
        yield hub


@pytest.fixture
def weights_dir(tmp_path: Path) -> Path:
    return tmp_path / "weights"


def test_downloads_exactly_the_allowed_files(hub: FakeHub, weights_dir: Path, capfd) -> None:
    paths = ensure_weights(configured(weights_dir, token=GOOD_TOKEN, endpoint=hub.endpoint))

    assert paths == {folder.name: weights_dir / folder.name for folder in ALL_FOLDERS}
    for folder in ALL_FOLDERS:
        assert files_under(weights_dir / folder.name) == expected_files(folder), folder.name
    assert not (weights_dir / STAGING_DIR).exists()
    requested = {Path(name).name for name in hub.requested()}
    assert not requested & NEVER_FETCHED
    assert "%|" not in capfd.readouterr().err  # no tqdm bar


def test_present_folders_cause_no_request(hub: FakeHub, weights_dir: Path, caplog) -> None:
    ensure_weights(configured(weights_dir, token=GOOD_TOKEN, endpoint=hub.endpoint))
    hub.clear_requests()
    caplog.set_level(logging.INFO, logger="weights.download")

    ensure_weights(configured(weights_dir, token=GOOD_TOKEN, endpoint=hub.endpoint))

    assert hub.requests == []
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [f.name for f in ALL_FOLDERS]
    assert all("found in" in r.getMessage() for r in caplog.records)


def test_required_files_alone_count_as_present(weights_dir: Path) -> None:
    for name in FLUX_SCHNELL.required_files:
        (weights_dir / FLUX_SCHNELL.name / name).parent.mkdir(parents=True, exist_ok=True)
        (weights_dir / FLUX_SCHNELL.name / name).write_text("{}")

    # An endpoint nobody listens on: any request would fail the call.
    paths = ensure_weights(configured(weights_dir, endpoint=f"http://127.0.0.1:{free_port()}"), [FLUX_SCHNELL])

    assert paths == {FLUX_SCHNELL.name: weights_dir / FLUX_SCHNELL.name}


def test_progress_is_logged_one_line_per_event(hub: FakeHub, weights_dir: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="weights.download")

    ensure_weights(configured(weights_dir, endpoint=hub.endpoint), [SAFETY_CHECKER])

    lines = [r.getMessage() for r in caplog.records if r.name == "weights.download"]
    assert lines[0].startswith(
        "stable-diffusion-safety-checker: downloading 3 files (4.1 kB) from CompVis/stable-diffusion-safety-checker"
    )
    # One line per file as it completes: files download in parallel, so in any order, numbered in turn.
    done = [line.removeprefix("stable-diffusion-safety-checker: ").split(" (")[0] for line in lines[1:4]]
    assert [entry.split()[0] for entry in done] == ["[1/3]", "[2/3]", "[3/3]"]
    assert sorted(entry.split()[1] for entry in done) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    assert lines[4].startswith("stable-diffusion-safety-checker: ready in ")
    assert len(lines) == 5


def test_gated_repo_without_token_says_what_to_do(hub: FakeHub, weights_dir: Path) -> None:
    with pytest.raises(WeightsDownloadError) as caught:
        ensure_weights(configured(weights_dir, endpoint=hub.endpoint), [FLUX_DEV])

    message = str(caught.value)
    assert message.startswith(
        "FLUX.1-dev is gated: accept the licence at https://huggingface.co/black-forest-labs/FLUX.1-dev, "
        "then set HF_TOKEN"
    )
    assert "or put the weights in WEIGHTS_DIR/FLUX.1-dev" in message
    assert not (weights_dir / FLUX_DEV.name).exists()
    assert not any(r.authorized for r in hub.requests)


def test_token_without_licence_is_refused_clearly(hub: FakeHub, weights_dir: Path) -> None:
    hub.add_repo(FLUX_DEV.repo_id, REPOS[FLUX_DEV], gated=True, authorized_tokens=set())

    with pytest.raises(WeightsDownloadError, match="HF_TOKEN has no access to the gated black-forest-labs"):
        ensure_weights(configured(weights_dir, token=GOOD_TOKEN, endpoint=hub.endpoint), [FLUX_DEV])


def test_wrong_token_is_refused_and_never_shown(
    hub: FakeHub, weights_dir: Path, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    monkeypatch.setenv("HF_TOKEN", WRONG_TOKEN)

    with pytest.raises(WeightsDownloadError, match="refused HF_TOKEN \\(invalid or expired\\)") as caught:
        ensure_weights(
            ServerConfig.from_env(weights_dir=weights_dir, hf_endpoint=hub.endpoint, device="cpu"), [FLUX_DEV]
        )

    assert WRONG_TOKEN not in str(caught.value)
    assert WRONG_TOKEN not in caplog.text
    assert all(r.authorized for r in hub.requests)


def test_token_is_sent_to_the_hub_only_and_never_logged(
    hub: FakeHub, weights_dir: Path, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)

    ensure_weights(ServerConfig.from_env(weights_dir=weights_dir, device="cpu"), [FLUX_DEV])

    hub_requests = [r for r in hub.requests if r.server == "hub"]
    assert hub_requests and all(r.authorized for r in hub_requests)
    # The CDN gets signed URLs; forwarding the token there is a leak (and S3 refuses it).
    assert all(not r.authorized for r in hub.requests if r.server == "cdn")
    assert GOOD_TOKEN not in caplog.text


def test_unknown_repo_says_so(hub: FakeHub, weights_dir: Path) -> None:
    hub.repos.pop(FLUX_SCHNELL.repo_id)

    with pytest.raises(WeightsDownloadError, match="black-forest-labs/FLUX.1-schnell was not found at http"):
        ensure_weights(configured(weights_dir, endpoint=hub.endpoint), [FLUX_SCHNELL])


def test_unreachable_hub_says_so(weights_dir: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"

    with pytest.raises(WeightsDownloadError, match=f"Cannot reach the Hugging Face Hub at {endpoint}"):
        ensure_weights(configured(weights_dir, endpoint=endpoint), [SAFETY_CHECKER])


def test_endpoint_that_is_no_hub_says_so(hub: FakeHub, weights_dir: Path) -> None:
    # The fake's CDN answers 404 to API paths, as any web server that is not a Hub would.
    with pytest.raises(WeightsDownloadError, match="which a Hugging Face Hub would not. Check HF_ENDPOINT"):
        ensure_weights(configured(weights_dir, endpoint=hub.cdn_endpoint), [SAFETY_CHECKER])


def test_partial_folder_in_the_way_is_not_overwritten(hub: FakeHub, weights_dir: Path) -> None:
    (weights_dir / NSFW_CLASSIFIER.name).mkdir(parents=True)
    (weights_dir / NSFW_CLASSIFIER.name / "config.json").write_text("{}")

    with pytest.raises(WeightsDownloadError, match="exists but is incomplete \\(missing preprocessor_config"):
        ensure_weights(configured(weights_dir, endpoint=hub.endpoint), [NSFW_CLASSIFIER])
    assert hub.requests == []


def test_empty_target_folder_is_filled(hub: FakeHub, weights_dir: Path) -> None:
    (weights_dir / NSFW_CLASSIFIER.name).mkdir(parents=True)

    ensure_weights(configured(weights_dir, endpoint=hub.endpoint), [NSFW_CLASSIFIER])

    assert files_under(weights_dir / NSFW_CLASSIFIER.name) == expected_files(NSFW_CLASSIFIER)


def test_dropped_connection_is_never_a_folder_and_a_retry_finishes_it(
    hub: FakeHub, weights_dir: Path, no_retry_wait: None
) -> None:
    # Every attempt at the file dies at the same byte: huggingface_hub's own retries give up.
    hub.drop_connection(FLUX_SCHNELL.repo_id, BIG_FILE, after_bytes=10_000, times=None)

    with pytest.raises(WeightsDownloadError, match=f"interrupted at {BIG_FILE}.*Run again to resume"):
        ensure_weights(configured(weights_dir, endpoint=hub.endpoint), [FLUX_SCHNELL])
    assert not (weights_dir / FLUX_SCHNELL.name).exists()

    hub.clear_faults()
    hub.clear_requests()
    ensure_weights(configured(weights_dir, endpoint=hub.endpoint), [FLUX_SCHNELL])

    assert files_under(weights_dir / FLUX_SCHNELL.name) == expected_files(FLUX_SCHNELL)
    # The files completed before the cut are kept, not fetched again.
    assert sorted(hub.fetched()) == [BIG_FILE]


def test_a_single_drop_is_resumed_within_the_call(hub: FakeHub, weights_dir: Path, no_retry_wait: None) -> None:
    fault = hub.drop_connection(FLUX_SCHNELL.repo_id, BIG_FILE, after_bytes=10_000)

    ensure_weights(configured(weights_dir, endpoint=hub.endpoint), [FLUX_SCHNELL])

    assert fault.hits == 1
    assert hub.fetched().count(BIG_FILE) == 2
    assert files_under(weights_dir / FLUX_SCHNELL.name) == expected_files(FLUX_SCHNELL)


def test_fake_hub_answers_the_other_huggingface_hub_calls(hub: FakeHub, tmp_path: Path) -> None:
    """The fake serves more than ensure_weights uses; LoRA downloads will rely on the rest."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    hub.add_repo("someone/private-lora", {"lora.safetensors": b"weights", "a/b.json": b"{}"}, private=True)
    api = HfApi(endpoint=hub.endpoint, token=GOOD_TOKEN)
    hub.tree_page_size = 1  # forces the Link-header pagination

    assert sorted(api.list_repo_files("someone/private-lora")) == ["a/b.json", "lora.safetensors"]
    assert [f.size for f in api.model_info("someone/private-lora", files_metadata=True).siblings] == [2, 7]
    path = hf_hub_download(
        "someone/private-lora", "lora.safetensors", endpoint=hub.endpoint, token=GOOD_TOKEN, cache_dir=tmp_path
    )
    assert Path(path).read_bytes() == b"weights"
    folder = snapshot_download(
        "someone/private-lora", endpoint=hub.endpoint, token=GOOD_TOKEN, local_dir=tmp_path / "snap"
    )
    assert (Path(folder) / "a" / "b.json").read_bytes() == b"{}"
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.endpoint, token=False).model_info("someone/private-lora")


def test_large_files_log_their_progress_by_tenths(hub: FakeHub, weights_dir: Path, caplog, monkeypatch) -> None:
    monkeypatch.setattr("weights.download.PROGRESS_LINES_ABOVE_BYTES", 32 * 1024)  # the 64 KiB transformer
    caplog.set_level(logging.INFO, logger="weights.download")

    ensure_weights(configured(weights_dir, token=GOOD_TOKEN, endpoint=hub.endpoint), [FLUX_SCHNELL])

    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("  ")]
    percents = [int(line.split(": ")[1].split("%")[0]) for line in progress]
    assert percents and percents[-1] == 100, progress
    assert percents == sorted(set(percents)) and len(percents) <= 10
