"""Long prompts: encoders read what they can (CLIP 77 tokens, T5 512 on dev), and the logs say so once, in our
own words, instead of echoing megabytes of cut-off text."""

from __future__ import annotations

import logging

from testkit.helpers import generate


def test_a_one_megabyte_prompt_runs_and_is_reported_in_one_short_line(service, caplog, capfd):
    caplog.set_level(logging.INFO)
    prompt = "a photo of TOK riding a bicycle through the old town at dusk " * 16_500  # about 1 MB
    assert len(prompt) > 10**6
    [output] = generate(service, prompt=prompt, megapixels="0.25", seed=1)
    assert output.image.size == (512, 512)
    notes = [r.getMessage() for r in caplog.records if "tokens for CLIP" in r.getMessage()]
    assert len(notes) == 1 and "the rest is ignored" in notes[0], notes
    assert f"({len(prompt)} characters) is at least" in notes[0]
    assert max(len(r.getMessage()) for r in caplog.records) < 1000
    printed = capfd.readouterr()
    assert "truncated" not in printed.err and len(printed.out) + len(printed.err) < 20_000


def test_a_short_prompt_says_nothing_about_tokens(service, caplog):
    caplog.set_level(logging.INFO)
    generate(service, prompt="a photo of TOK", megapixels="0.25", seed=1)
    assert not [r for r in caplog.records if "tokens for CLIP" in r.getMessage()]
