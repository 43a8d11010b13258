"""Prompt normalisation: abbreviations and variants to the words of the training descriptions.

The canonical phrasing is QaTa's (the LViT descriptions): lower case, zone words before the
side, then "lung" ("middle lower right lung"), numbers as words ("two infected areas").
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable

__all__ = ["ABBREVIATIONS", "STOP_WORDS", "build_vocabulary", "content_words", "normalise_prompt"]

#: Whole-word rewrites applied after lower-casing (QaTa phrasing: zone before side, then "lung").
ABBREVIATIONS: dict[str, str] = {
    "rul": "upper right lung",
    "rml": "middle right lung",
    "rll": "lower right lung",
    "lul": "upper left lung",
    "lll": "lower left lung",
    "bilat": "bilateral",
    "bil": "bilateral",
    "unilat": "unilateral",
    "rt": "right",
    "lt": "left",
    "r": "right",
    "l": "left",
    "mid": "middle",
    "lobe": "lung",
    "lobes": "lung",
    "zone": "lung",
    "zones": "lung",
    "lungs": "lung",
    "1": "one",
    "2": "two",
    "3": "three",
    "4": "four",
    "5": "five",
    "6": "six",
}

#: Function words that carry no anatomy; ignored by the vocabulary and the out-of-domain check.
STOP_WORDS = frozenset(
    "a an the of in on at to for from by with within and or as is are was were be been "
    "there this that these those its it".split()
)

_ZONE = r"(?:upper|middle|lower)"
_ZONES = rf"((?:{_ZONE} (?:and )?)*{_ZONE})"
# "right lower lung", "left upper middle lung" -> zone words first, as QaTa writes them.
_SIDE_FIRST = re.compile(rf"\b(left|right) {_ZONES} lung\b")
# "right and left lower lung" -> "lower right lung and lower left lung".
_BOTH_SIDES_FIRST = re.compile(rf"\b(left|right) and (left|right) {_ZONES} lung\b")
# "R/L", "rt/lt", "left/right": both sides.
_SIDE_PAIR = re.compile(r"\b(r|rt|right|l|lt|left)\s*/\s*(r|rt|right|l|lt|left)\b")
# An abbreviation written with a full stop ("bil.", "Rt.", "L.") loses the stop.
_ABBREVIATION_STOP = re.compile(r"\b(bilat|bil|unilat|rt|lt|r|l)\.")
_WORD = re.compile(r"\w+")
# A token for ABBREVIATIONS: a whole number ("2", "2.5") or a word.
_TOKEN = re.compile(r"\d+(?:\.\d+)*|\w+")


def _clean_characters(text: str) -> str:
    """NFKC-normalise, lower-case, and keep only word characters, spaces, commas and stops."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _ABBREVIATION_STOP.sub(r"\1", text)
    text = _SIDE_PAIR.sub(r"\1 and \2", text)
    text = re.sub(r"[&+]", " and ", text)
    text = re.sub(r"[;:]", ",", text)
    text = re.sub(r"[!?]", ".", text)
    text = "".join(c if c.isalnum() or c in " ,." else " " for c in text)
    text = re.sub(r"\s*(,|\.(?!\d))[\s,.]*", lambda m: m.group(1) + " ", text)
    return " ".join(text.split()).lstrip(" ,.").rstrip(" ,")


def normalise_prompt(text: str) -> str:
    """Rewrite a prompt into the words and phrasing of the training descriptions.

    Lower-cases (the text encoders are uncased), applies Unicode NFKC, expands the
    abbreviations in :data:`ABBREVIATIONS` ("RLL" -> "lower right lung", "bilat" ->
    "bilateral", "R"/"Rt" -> "right", digits 1-6 -> words), puts zone words before the side
    ("right lower lobe" -> "lower right lung"), treats "/", "-" and other symbols as spaces,
    and tidies spaces and punctuation ("lung ,two" -> "lung, two"). Idempotent.

    Args:
        text: The prompt as typed.

    Returns:
        The normalised prompt, e.g. "bilateral pulmonary infection, lower left lung".

    Raises:
        TypeError: ``text`` is not a string.
        ValueError: ``text`` is empty, whitespace or punctuation only.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}: {text!r}")
    cleaned = _clean_characters(text)
    if not _WORD.search(cleaned):
        raise ValueError(
            f"text is empty: got {text!r}; type what to segment, "
            "e.g. 'lower left lung infection'"
        )
    words = _TOKEN.sub(lambda m: ABBREVIATIONS.get(m.group(0), m.group(0)), cleaned)
    words = re.sub(r"\blung( lung)+\b", "lung", words)
    words = _BOTH_SIDES_FIRST.sub(r"\3 \1 lung and \3 \2 lung", words)
    return _SIDE_FIRST.sub(r"\2 \1 lung", words)


def content_words(text: str) -> list[str]:
    """Words of a normalised text that name something: no stop words, no numbers."""
    return [w for w in _WORD.findall(text) if w not in STOP_WORDS and not w.isdigit()]


def build_vocabulary(descriptions: Iterable[str]) -> list[str]:
    """The sorted content words of training descriptions, after :func:`normalise_prompt`.

    Args:
        descriptions: Training texts (e.g. the Description column of train.csv).

    Returns:
        Sorted distinct lower-case words, without stop words and numbers.

    Raises:
        ValueError: a description is empty or not a string (its position is named).
    """
    vocabulary: set[str] = set()
    for index, description in enumerate(descriptions):
        if not isinstance(description, str) or not description.strip():
            raise ValueError(
                f"descriptions[{index}] is empty or not text: {description!r}; "
                "every training image needs a description"
            )
        vocabulary.update(content_words(normalise_prompt(description)))
    return sorted(vocabulary)
