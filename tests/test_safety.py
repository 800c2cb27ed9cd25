"""Safety through the real tiny checkers: their verdicts follow image brightness (testkit/tiny_weights.py), so each
case is set up by choosing thresholds, never by mocking a checker."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generation.errors import UserInputError
from generation.safety import ALL_FLAGGED_MESSAGE, SafetyChecker
from generation.service import GenerationService
from testkit.helpers import generate
from testkit.tiny_weights import TIE_MARGIN, write_nsfw_classifier, write_safety_checker

ALWAYS = -0.5  # every brightness in [0, 1] is above it
NEVER = None


@pytest.fixture
def service_with(service, tmp_path):
    """The session's models with safety models built for the given thresholds."""

    def build(checker_threshold, classifier_threshold) -> GenerationService:
        write_safety_checker(tmp_path / "checker", checker_threshold)
        write_nsfw_classifier(tmp_path / "classifier", classifier_threshold)
        safety = SafetyChecker(tmp_path / "checker", tmp_path / "classifier", torch.device("cpu"), torch.float32)
        return GenerationService(service.settings, safety, service.loras)

    return build


REQUEST = dict(num_outputs=4, megapixels="0.25", seed=2, output_format="png")


def test_nothing_flagged_returns_every_output(service_with):
    outputs = generate(service_with(NEVER, NEVER), **REQUEST)
    assert [o.name for o in outputs] == ["out-0.png", "out-1.png", "out-2.png", "out-3.png"]


def test_all_flagged_by_both_is_the_reference_error(service_with):
    with pytest.raises(UserInputError) as error:
        generate(service_with(ALWAYS, ALWAYS), **REQUEST)
    assert str(error.value) == ALL_FLAGGED_MESSAGE


def test_second_opinion_clears_the_checker(service_with):
    outputs = generate(service_with(ALWAYS, NEVER), **REQUEST)
    assert len(outputs) == 4


def test_disable_safety_checker_skips_both(service_with):
    assert len(generate(service_with(ALWAYS, ALWAYS), disable_safety_checker=True, **REQUEST)) == 4


def test_flagged_outputs_are_dropped_and_names_keep_their_index(service, service_with):
    unchecked = generate(service, disable_safety_checker=True, **REQUEST)
    brightness = [_seen_brightness(service, o.image) for o in unchecked]
    threshold = _threshold_with_a_gap_in_the_names(brightness)
    kept = generate(service_with(threshold, ALWAYS), **REQUEST)  # the classifier confirms every flag
    expected = [o for o, b in zip(unchecked, brightness, strict=True) if b <= threshold + TIE_MARGIN]
    assert [o.name for o in kept] == [o.name for o in expected]
    assert [o.name for o in kept] != [f"out-{i}.png" for i in range(len(kept))], "names must keep their index"
    assert [o.digest for o in kept] == [o.digest for o in expected], "kept images are returned unchanged"


def _seen_brightness(service, image) -> float:
    """Mean brightness of the 224x224 crop the checker's processor makes (the statistic it judges)."""
    processor = service.safety.checker_processor
    pixels = processor(image, return_tensors="np").pixel_values[0]
    mean, std = np.array(processor.image_mean)[:, None, None], np.array(processor.image_std)[:, None, None]
    return float((pixels * std + mean).mean())


def _threshold_with_a_gap_in_the_names(values: list[float]) -> float:
    """A threshold whose decision boundary (threshold + TIE_MARGIN) sits in the middle of a gap between the
    brightnesses such that the kept outputs are not simply out-0..out-k. The tiny VAE's noise images differ
    in brightness by ~1e-4; the checker's float32 arithmetic is exact to ~1e-6, so a gap of 2e-5 is ample."""
    ordered = sorted(values)
    for low, high in sorted(zip(ordered, ordered[1:], strict=False), key=lambda pair: pair[0] - pair[1]):
        kept = [i for i, b in enumerate(values) if b <= low]
        if high - low > 2e-5 and kept != list(range(len(kept))):
            return (low + high) / 2 - TIE_MARGIN
    raise AssertionError(f"no usable split of these brightnesses: {values}")
