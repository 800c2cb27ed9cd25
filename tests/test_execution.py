"""Which execution path a request runs and why (generation/execution.py), and when the fp8 path cannot exist.

Routing is decided from the request and its plan alone, so it is tested with paths that hold no models; the
service tests (test_fast_path_routing.py, test_compiled_path.py) run real ones."""

from __future__ import annotations

import pytest
import torch

from generation import execution
from generation.execution import ExecutionPath, ExecutionPaths
from generation.fp8_path import fp8_unavailable_reason
from generation.request import GenerationRequest, plan


def test_cpu_cannot_run_fp8():
    assert "CUDA GPU" in fp8_unavailable_reason(torch.device("cpu"))


@pytest.mark.parametrize(("capability", "ok"), [((8, 0), False), ((8, 6), False), ((8, 9), True), ((9, 0), True)])
def test_compute_capability_threshold(capability, ok, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    reason = fp8_unavailable_reason(torch.device("cuda"), capability=capability)
    assert (reason is None) == ok
    if not ok:
        assert f"{capability[0]}.{capability[1]}" in reason


def test_missing_torchao_is_a_reason(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert "torchao" in fp8_unavailable_reason(torch.device("cuda"), capability=(9, 0))


class NoAdapters:
    """A path's adapter manager for routing tests, which attach nothing; counts how often its slots were armed."""

    resident = ()
    armed = 0

    def apply(self, model, main, extra, *, multiplier=1.0) -> None: ...

    def empty(self) -> None: ...

    def arm(self) -> None:
        self.armed += 1


def path(name: str, compiled: bool) -> ExecutionPath:
    return ExecutionPath(name, None, NoAdapters(), 1.0, compiled, f"the {name} path")  # type: ignore[arg-type]


PLAIN, COMPILED, FP8 = path("plain", False), path("compiled", True), path("fp8", True)


def route(paths: ExecutionPaths, image_size: tuple[int, int] | None = None, **fields) -> execution.Route:
    request = GenerationRequest(prompt="x", **fields)
    return paths.route(request, plan(request, image_size))


@pytest.mark.parametrize(
    ("built", "fields", "expected", "says"),
    [
        ((COMPILED, FP8), {}, "compiled", "go_fast is off: the compiled path"),
        ((None, None), {}, "plain", "go_fast is off: the plain path"),
        ((COMPILED, FP8), {"go_fast": True}, "fp8", "go_fast: the fp8 path"),
        ((COMPILED, None), {"go_fast": True}, "compiled", "go_fast: fp8 needs a GPU; running the compiled path"),
        ((None, None), {"go_fast": True}, "plain", "go_fast: fp8 needs a GPU; running the plain path"),
        (
            (COMPILED, FP8),
            {"go_fast": True, "aspect_ratio": "custom", "width": 512, "height": 512},
            "compiled",
            "custom sizes run in bf16",
        ),
    ],
)
def test_route_by_request(built, fields, expected, says):
    compiled, fp8 = built
    paths = ExecutionPaths(PLAIN, compiled, fp8, unavailable={"fp8": "fp8 needs a GPU"} if fp8 is None else None)
    chosen = route(paths, **fields)
    assert (chosen.name, chosen.eager) == (expected, False)
    assert says in chosen.reason


def test_custom_means_nothing_with_an_input_image_so_go_fast_still_runs(tmp_path):
    paths = ExecutionPaths(PLAIN, COMPILED, FP8)
    image = tmp_path / "photo.png"
    chosen = route(paths, (96, 64), go_fast=True, aspect_ratio="custom", image=image, prompt_strength=0.9)
    assert chosen.name == "fp8"


@pytest.mark.parametrize(
    ("image_size", "eager"), [((16, 16), True), ((5, 3), True), ((32, 16), False), ((16, 32), False)]
)
def test_a_single_image_token_runs_uncompiled(image_size, eager, tmp_path):
    """A one-token image (any input of 16x16 pixels or less) would recompile every compiled block."""
    paths = ExecutionPaths(PLAIN, COMPILED, FP8)
    for go_fast, name in ((False, "compiled"), (True, "fp8")):
        chosen = route(paths, image_size, image=tmp_path / "x.png", go_fast=go_fast, prompt_strength=1.0)
        assert (chosen.path.name, chosen.eager) == (name, eager)
        assert chosen.name == (f"{name}+eager" if eager else name)
        assert ("single image token" in chosen.reason) == eager
    assert not route(ExecutionPaths(PLAIN), image_size, image=tmp_path / "x.png", prompt_strength=1.0).eager


def test_fallback_goes_to_the_plain_path_and_says_why():
    paths = ExecutionPaths(PLAIN, COMPILED, FP8)
    fallback = paths.fallback(route(paths, go_fast=True), "LoRA x: it changes 3 CLIP-L layers")
    assert (fallback.name, fallback.reason) == ("plain", "LoRA x: it changes 3 CLIP-L layers; running the plain path")


def test_a_request_off_the_default_path_or_asking_for_go_fast_is_logged(caplog):
    caplog.set_level("INFO")
    paths = ExecutionPaths(PLAIN, COMPILED, FP8)
    execution.log_route(route(paths), paths.default, go_fast=False)
    assert caplog.records == []
    execution.log_route(route(paths, go_fast=True), paths.default, go_fast=True)
    assert caplog.records[-1].getMessage() == "Execution path fp8: go_fast: the fp8 path"
    no_fp8 = ExecutionPaths(PLAIN, COMPILED)
    execution.log_route(route(no_fp8, go_fast=True), no_fp8.default, go_fast=True)
    assert caplog.records[-1].getMessage() == (
        "Execution path compiled: go_fast: the fp8 path was not built; running the compiled path"
    )


def test_the_plain_path_runs_with_compiled_code_off():
    """The plain path shares its modules with the compiled one: its calls must not run (or replace) the
    compiled graphs, whichever stance the caller is in."""
    calls = []

    @torch.compile(backend="eager")
    def double(x):
        calls.append(torch.compiler.is_compiling())
        return x * 2

    for candidate, eager, compiled in ((PLAIN, False, False), (COMPILED, False, True), (COMPILED, True, False)):
        calls.clear()
        armed = candidate.adapters.armed
        with candidate.running(eager):
            double(torch.ones(2))
        assert calls == [compiled]
        assert candidate.adapters.armed == armed + compiled, "slots armed whenever compiled code runs"
