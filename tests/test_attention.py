"""generation.attention: the backend is measured among those the device can run, checked against a float32
reference, forced by FLUX_ATTENTION_BACKEND when set, and applied to a transformer (CPU, small shapes; the
timings are data here, never asserted as speeds)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import torch
from diffusers import FluxTransformer2DModel
from diffusers.models import attention_dispatch as dispatch

from generation.attention import (
    CPU_CANDIDATES,
    CUDA_CANDIDATES,
    AttentionBackendUnavailable,
    apply_attention_backend,
    choose_attention_backend,
    default_candidates,
    resolve_attention_backend,
)

SMALL = {"seq_len": 48, "heads": 2, "head_dim": 32, "repeats": 3}


@pytest.fixture(autouse=True)
def active_backend() -> Iterator[None]:
    """set_attention_backend also changes diffusers' process-wide active backend: put it back."""
    before = dispatch._AttentionBackendRegistry._active_backend
    yield
    dispatch._AttentionBackendRegistry.set_active_backend(before)


def test_on_cpu_both_candidates_are_timed_and_checked_and_the_fastest_chosen() -> None:
    choice = choose_attention_backend("cpu", torch.float32, **SMALL)

    assert [c.backend for c in choice.candidates] == list(CPU_CANDIDATES) == ["native", "_native_math"]
    assert all(c.usable and c.median_seconds > 0 and c.error <= choice.tolerance for c in choice.candidates)
    assert choice.backend == min(choice.candidates, key=lambda c: c.median_seconds).backend
    assert not choice.forced and (choice.device, choice.dtype, choice.shape) == ("cpu", "float32", (1, 48, 2, 32))
    assert choice.log_line().startswith(f"Attention backend: {choice.backend} (")
    assert all(c.backend in choice.log_line() for c in choice.candidates)
    assert json.loads(json.dumps(choice.as_dict()))["backend"] == choice.backend  # plain data


def test_candidates_this_device_cannot_run_are_skipped_with_the_reason() -> None:
    candidates = ("native", "_native_cudnn", "flash", "_flash_3")

    choice = choose_attention_backend("cpu", torch.float32, candidates, **SMALL)

    assert choice.backend == "native"
    skipped = {c.backend: c.skipped for c in choice.candidates if not c.usable}
    assert set(skipped) == {"_native_cudnn", "flash", "_flash_3"}
    assert "must be either bfloat16 or float16" in skipped["_native_cudnn"]  # diffusers' own dtype check
    assert "flash-attn" in skipped["flash"] and "FA3" in skipped["_flash_3"]  # packages not installed
    assert all(choice.candidate(name).median_seconds is None for name in skipped)
    assert "_native_cudnn skipped: ValueError" in choice.log_line()


def test_a_kernel_the_device_lacks_is_skipped_with_torchs_reason() -> None:
    choice = choose_attention_backend("cpu", torch.bfloat16, ("native", "_native_cudnn"), **SMALL)

    assert "No viable backend for scaled_dot_product_attention" in choice.candidate("_native_cudnn").skipped
    assert choice.candidate("native").error <= choice.tolerance == 2e-2


def test_a_backend_that_gives_wrong_numbers_is_refused(monkeypatch) -> None:
    math = dispatch.AttentionBackendName._NATIVE_MATH
    honest = dispatch._AttentionBackendRegistry._backends[math]
    monkeypatch.setitem(dispatch._AttentionBackendRegistry._backends, math, lambda **kw: honest(**kw) * 1.01)

    choice = choose_attention_backend("cpu", torch.float32, ("_native_math", "native"), **SMALL)

    assert choice.backend == "native"
    refused = choice.candidate("_native_math")
    assert refused.skipped.startswith("wrong output: error 1.00e-02 > tolerance 2e-03")
    assert refused.error == pytest.approx(0.01, rel=1e-3) and refused.median_seconds is None


def test_nothing_usable_and_unknown_names_are_errors() -> None:
    with pytest.raises(RuntimeError, match="no attention backend can run on cpu in float32 .*_native_cudnn: "):
        choose_attention_backend("cpu", "float32", ("_native_cudnn",), **SMALL)
    with pytest.raises(ValueError, match="diffusers attention backends"):
        choose_attention_backend("cpu", "float32", ("fastest",), **SMALL)


def test_default_candidates_by_device() -> None:
    assert default_candidates("cpu") == ("native", "_native_math")
    # CUDA's list needs no GPU to compute: the four SDPA choices, FlashAttention only when its package imports.
    expected = CUDA_CANDIDATES + (("_flash_3",) if dispatch._CAN_USE_FLASH_ATTN_3 else ())
    expected += ("flash",) if dispatch._CAN_USE_FLASH_ATTN else ()
    assert default_candidates("cuda") == expected
    assert CUDA_CANDIDATES == ("native", "_native_cudnn", "_native_flash", "_native_efficient")


def test_the_setting_forces_one_backend_or_fails_setup_saying_why() -> None:
    assert resolve_attention_backend("auto", "cpu", "float32", **SMALL).forced is False

    forced = resolve_attention_backend("_native_math", "cpu", "float32", **SMALL)
    assert (forced.backend, forced.forced, [c.backend for c in forced.candidates]) == (
        "_native_math",
        True,
        ["_native_math"],
    )
    assert forced.log_line().endswith("forced by FLUX_ATTENTION_BACKEND")

    with pytest.raises(AttentionBackendUnavailable, match=r"FLUX_ATTENTION_BACKEND='_native_cudnn' cannot be used: "):
        resolve_attention_backend("_native_cudnn", "cpu", "float32", **SMALL)


def _inputs(transformer: FluxTransformer2DModel) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    config = transformer.config
    image_tokens, text_tokens = 16, 8
    return {
        "hidden_states": torch.randn(1, image_tokens, config.in_channels, generator=generator),
        "encoder_hidden_states": torch.randn(1, text_tokens, config.joint_attention_dim, generator=generator),
        "pooled_projections": torch.randn(1, config.pooled_projection_dim, generator=generator),
        "timestep": torch.tensor([0.5]),
        "guidance": torch.tensor([3.5]),
        "img_ids": torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"))
        .reshape(3, -1)
        .T,
        "txt_ids": torch.zeros(text_tokens, 3),
    }


def test_applying_a_choice_routes_the_transformers_attention_and_keeps_its_output(tiny_weights, monkeypatch, caplog):
    transformer = FluxTransformer2DModel.from_pretrained(tiny_weights / "FLUX.1-dev", subfolder="transformer")
    inputs = _inputs(transformer)
    with torch.inference_mode():
        default = transformer(**inputs, return_dict=False)[0]
    choice = choose_attention_backend(
        "cpu", torch.float32, ("_native_math",), seq_len=24, heads=2, head_dim=16, repeats=1
    )
    math = dispatch.AttentionBackendName._NATIVE_MATH
    calls = []
    honest = dispatch._AttentionBackendRegistry._backends[math]
    monkeypatch.setitem(
        dispatch._AttentionBackendRegistry._backends, math, lambda **kw: calls.append(1) or honest(**kw)
    )

    diffusers_lines = _Lines()
    logging.getLogger("diffusers").addHandler(diffusers_lines)  # diffusers' loggers do not reach the root's
    try:
        with caplog.at_level(logging.INFO):
            apply_attention_backend(transformer, choice, name="dev")
    finally:
        logging.getLogger("diffusers").removeHandler(diffusers_lines)
    with torch.inference_mode():
        routed = transformer(**inputs, return_dict=False)[0]

    assert {p._attention_backend for p in transformer.attn_processors.values()} == {math}
    assert len(calls) == 2  # one double-stream and one single-stream block, each through the chosen backend
    torch.testing.assert_close(routed, default, rtol=1e-5, atol=1e-5)
    messages = [record.getMessage() for record in caplog.records]
    assert [m for m in messages if m.startswith("Attention backend (dev): _native_math (")]
    assert not [m for m in diffusers_lines.messages if "experimental feature" in m]  # a developer notice, dropped


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
