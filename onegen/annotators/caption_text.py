"""The captioner's text contract: one instruction that asks a VLM for a long caption and an entity
list in one answer, and the parser that accepts or rejects that answer.

The answer format is two labelled lines, which VLMs follow far more reliably than JSON::

    CAPTION: <one paragraph, min_words..max_words words>
    ENTITIES: <noun>, <noun>, ...

``check`` returns the caption and normalised entities, or the reason the answer is unusable
(malformed, too short or long, a repetition loop, no entities, cut off at the token limit).
An unusable answer is never passed on as a caption: the caller retries it or records the reason.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

# Markers may come wrapped in markdown (``**CAPTION:**``) or in another case.
_CAPTION = re.compile(r"[*#\s]*caption[*\s]*:[*\s]*", re.IGNORECASE)
_ENTITIES = re.compile(r"[*#\s]*entities[*\s]*:[*\s]*", re.IGNORECASE)
_ITEM_SPLIT = re.compile(r"[,;\n]|\s+-\s+")
_ENUMERATOR = re.compile(r"^\s*(?:[-*•]+|\d+[.)])\s*")
_ARTICLE = re.compile(r"^(?:a|an|the)\s+")
_NOUN_PHRASE = re.compile(r"^[a-z][a-z' -]*$")
_WORD = re.compile(r"[a-z0-9']+")

MAX_ENTITY_WORDS = 4
REPEAT_NGRAM = 4  # a word 4-gram seen REPEAT_LIMIT times is a decoding loop, not style
REPEAT_LIMIT = 3


def instruction(min_words: int, max_words: int, max_entities: int) -> str:
    """The single prompt that yields both the long caption and the entity list."""
    return (
        f"Describe this image in one detailed paragraph of {min_words} to {max_words} words: the main "
        "subjects, their attributes and actions, the setting, colours, lighting and composition. "
        f"Then list up to {max_entities} distinct objects or subjects visible in the image, each as a "
        "short noun.\nAnswer in exactly this format:\n"
        "CAPTION: <paragraph>\nENTITIES: <noun>, <noun>, ..."
    )


@dataclass(frozen=True)
class CaptionCheck:
    """A parsed answer: ``error`` is None when ``caption`` and ``entities`` may be stored."""

    caption: str
    entities: tuple[str, ...]
    error: str | None


def normalise_entity(item: str) -> str | None:
    """``"2. The red Car."`` -> ``"red car"``; None for anything that is not a short noun phrase."""
    item = _ENUMERATOR.sub("", item).strip().strip("\"'`*.:").strip().lower()
    item = " ".join(_ARTICLE.sub("", item).split())
    if not item or not _NOUN_PHRASE.match(item) or len(item.split()) > MAX_ENTITY_WORDS:
        return None
    return item


def repeated_ngram(text: str, n: int = REPEAT_NGRAM, limit: int = REPEAT_LIMIT) -> tuple[str, int] | None:
    """The most frequent word n-gram if it occurs at least ``limit`` times, else None."""
    words = _WORD.findall(text.lower())
    counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    if not counts:
        return None
    gram, count = counts.most_common(1)[0]
    return (" ".join(gram), count) if count >= limit else None


def check(text: str, *, min_words: int, max_words: int, max_entities: int, truncated: bool = False) -> CaptionCheck:
    """Parse and validate one VLM answer. ``truncated``: generation stopped at the token limit."""
    caption_at = _CAPTION.search(text)
    entities_at = _ENTITIES.search(text, caption_at.end()) if caption_at else None

    def bad(reason: str, caption: str = "", entities: tuple[str, ...] = ()) -> CaptionCheck:
        return CaptionCheck(caption, entities, reason)

    if truncated:
        return bad("truncated: no end of sequence within max_new_tokens")
    if caption_at is None:
        return bad("malformed: no 'CAPTION:' label")
    if entities_at is None:
        return bad("malformed: no 'ENTITIES:' label after the caption")
    caption = " ".join(text[caption_at.end() : entities_at.start()].split()).strip("\"'")
    entities: list[str] = []
    for raw in _ITEM_SPLIT.split(text[entities_at.end() :].strip().split("\n\n")[0]):
        item = normalise_entity(raw)
        if item and item not in entities:
            entities.append(item)
    entities_t = tuple(entities[:max_entities])
    n_words = len(caption.split())
    if n_words < min_words:
        return bad(f"caption too short: {n_words} words < {min_words}", caption, entities_t)
    if n_words > max_words:
        return bad(f"caption too long: {n_words} words > {max_words}", caption, entities_t)
    loop = repeated_ngram(caption)
    if loop:
        return bad(f"repetition loop: '{loop[0]}' {loop[1]} times", caption, entities_t)
    if not entities_t:
        return bad("no entities: the ENTITIES line lists no short nouns", caption)
    return CaptionCheck(caption, entities_t, None)
