"""Path selection for go_fast: every reason the fp8 path does not run is decided and logged (CPU-testable)."""

from __future__ import annotations

import pytest
import torch

from generation import precision


def test_cpu_cannot_run_fp8():
    assert "CUDA GPU" in precision.fp8_unavailable_reason(torch.device("cpu"))


@pytest.mark.parametrize(("capability", "ok"), [((8, 0), False), ((8, 6), False), ((8, 9), True), ((9, 0), True)])
def test_compute_capability_threshold(capability, ok, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    reason = precision.fp8_unavailable_reason(torch.device("cuda"), capability=capability)
    assert (reason is None) == ok
    if not ok:
        assert f"{capability[0]}.{capability[1]}" in reason


def test_missing_torchao_is_a_reason(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert "torchao" in precision.fp8_unavailable_reason(torch.device("cuda"), capability=(9, 0))


@pytest.mark.parametrize(
    ("go_fast", "custom_size", "unavailable", "fast", "says"),
    [
        (False, False, None, False, "go_fast is off"),
        (True, True, None, False, "custom sizes run in bf16"),
        (True, False, "fp8 needs a CUDA GPU", False, "fp8 needs a CUDA GPU"),
        (True, False, None, True, "fp8"),
    ],
)
def test_choose_path(go_fast, custom_size, unavailable, fast, says):
    choice = precision.choose_path(go_fast, custom_size, unavailable)
    assert choice.fast == fast and says in choice.reason


def test_fallback_is_logged_only_when_go_fast_was_asked(caplog):
    caplog.set_level("INFO")
    precision.log_choice(precision.choose_path(False, False, "no GPU"), go_fast=False)
    assert caplog.records == []
    precision.log_choice(precision.choose_path(True, True, None), go_fast=True)
    assert (
        caplog.records[-1].getMessage()
        == "go_fast: custom sizes run in bf16, as the schema says; running the plain path"
    )
