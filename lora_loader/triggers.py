"""Trigger words: the words a LoRA was trained to respond to, wherever its publisher recorded them.

Sources, in the order they are trusted:
- the trainer's ai-toolkit `config.yaml` in a Replicate tar: `config.process[*].trigger_word`;
- CivitAI's `trainedWords` for the version;
- the Hugging Face model card's `instance_prompt` (diffusers' DreamBooth scripts and ai-toolkit write it);
- the safetensors `__metadata__`: explicit keys (`trigger_word`, `modelspec.trigger_phrase` from the SAI
  model spec, kohya's `ss_trigger_words`, ...), an ai-toolkit config stored as JSON in a metadata value,
  and failing those kohya's `ss_tag_frequency`, whose most frequent caption tags are the trigger in
  practice (a trigger is in every caption).
Entries are split on commas and deduplicated case-insensitively; a few at most are kept, because the
caller only uses them for a hint when the prompt lacks them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import yaml

MAX_WORDS = 8
MAX_WORD_CHARS = 100
MAX_CONFIG_BYTES = 1_000_000
EXPLICIT_METADATA_KEYS = (
    "trigger_word",
    "trigger_words",
    "trigger_phrase",
    "modelspec.trigger_phrase",
    "ss_trigger_words",
    "instance_prompt",
    "activation text",
)
TOP_TAGS = 3


def merge(*groups: Iterable[str]) -> tuple[str, ...]:
    """The words of all groups in order, split on commas, without repeats, at most MAX_WORDS."""
    seen: set[str] = set()
    words: list[str] = []
    for group in groups:
        for word in split_words(list(group)):
            if word.casefold() not in seen and len(words) < MAX_WORDS:
                seen.add(word.casefold())
                words.append(word)
    return tuple(words)


def split_words(value: object) -> list[str]:
    """Words from a string ("a, b"), a JSON list in a string, or a list of either."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return split_words(json.loads(text))
            except json.JSONDecodeError:
                pass
        return [w.strip() for w in text.split(",") if w.strip() and len(w.strip()) <= MAX_WORD_CHARS]
    if isinstance(value, (list, tuple)):
        return [w for item in value for w in split_words(item)]
    return []


def from_metadata(metadata: Mapping[str, str]) -> tuple[str, ...]:
    explicit = [w for key in EXPLICIT_METADATA_KEYS for w in split_words(metadata.get(key))]
    for value in metadata.values():
        if value.lstrip().startswith("{") and "trigger_word" in value:
            explicit += _from_config_object(_json(value))
    return merge(explicit) if explicit else merge(_top_tags(metadata.get("ss_tag_frequency")))


def from_trainer_config(text: str) -> tuple[str, ...]:
    """`trigger_word` of an ai-toolkit job config (YAML, as the Replicate trainer's tar holds it)."""
    if len(text) > MAX_CONFIG_BYTES:
        return ()
    try:
        return merge(_from_config_object(yaml.safe_load(text)))
    except yaml.YAMLError:
        return ()


def from_model_card(text: str) -> tuple[str, ...]:
    """`instance_prompt` from a Hugging Face README's YAML front matter."""
    if not text.startswith("---"):
        return ()
    front, _, _ = text[3:].partition("\n---")
    try:
        data = yaml.safe_load(front)
    except yaml.YAMLError:
        return ()
    return merge(split_words(data.get("instance_prompt"))) if isinstance(data, dict) else ()


def _from_config_object(obj: object) -> list[str]:
    if not isinstance(obj, dict):
        return []
    config = obj.get("config", obj)
    if not isinstance(config, dict):
        return []
    processes = config.get("process")
    words = split_words(config.get("trigger_word"))
    for process in processes if isinstance(processes, list) else []:
        if isinstance(process, dict):
            words += split_words(process.get("trigger_word"))
    return words


def _top_tags(raw: str | None) -> list[str]:
    """Tags as frequent as the most frequent one in kohya's {dataset: {tag: count}} (at most TOP_TAGS)."""
    counts: dict[str, int] = {}
    for tags in (_json(raw) or {}).values() if raw else []:
        for tag, count in tags.items() if isinstance(tags, dict) else []:
            if isinstance(count, int):
                counts[tag.strip()] = counts.get(tag.strip(), 0) + count
    if not counts:
        return []
    top = max(counts.values())
    return [tag for tag, count in sorted(counts.items(), key=lambda kv: -kv[1]) if count == top and tag][:TOP_TAGS]


def _json(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
