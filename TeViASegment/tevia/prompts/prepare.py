"""The prompt a model encodes: normalised, sides rewritten, with warnings for the user."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

from tevia.prompts.normalise import content_words, normalise_prompt
from tevia.prompts.sides import names_a_side, side_mirroring, swap_sides

__all__ = ["PreparedPrompt", "prepare_prompt"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt ready for the text encoder, with what was done to it.

    Attributes:
        original: The text the user typed.
        text: The text the model encodes (normalised, sides rewritten if needed).
        convention: The user's side convention, "patient" or "image".
        mirrored: True when left/right words were swapped in ``text``.
        warnings: Human-readable warnings (out-of-domain words, truncation, ...).
        side_note: How the side decision was made (orientation used or assumed).
    """

    original: str
    text: str
    convention: str
    mirrored: bool
    warnings: tuple[str, ...] = ()
    side_note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The prompt as a JSON-ready dict (for worker events and server responses)."""
        return {
            "original": self.original,
            "text": self.text,
            "convention": self.convention,
            "mirrored": self.mirrored,
            "warnings": list(self.warnings),
            "side_note": self.side_note,
        }


def _truncate(text: str, max_words: int) -> tuple[str, str | None]:
    words = text.split()
    if len(words) <= max_words:
        return text, None
    kept = " ".join(words[:max_words]).rstrip(" ,")
    return kept, (
        f"the prompt has {len(words)} words; only the first {max_words} were used "
        f"(up to {words[max_words - 1]!r}); shorten it to describe one finding"
    )


def prepare_prompt(
    text: str,
    spec: Any,
    convention: str = "patient",
    column_direction_ras: Sequence[float] | None = None,
    max_words: int = 64,
) -> PreparedPrompt:
    """Turn a user's prompt into the text the model should encode.

    Args:
        text: The prompt as typed (any Unicode; normalised with NFKC).
        spec: The model's spec: any object with ``side_convention`` ("image"/"patient") and
            ``vocabulary`` (list of str; empty disables the out-of-domain check).
        convention: The user's side convention, "patient" (radiological) or "image".
        column_direction_ras: RAS direction of increasing column index of the image the
            prompt is for (3 numbers), or None when unknown (see :func:`side_mirroring`).
        max_words: Longer normalised prompts are cut to this many words, with a warning.

    Returns:
        The :class:`PreparedPrompt`.

    Raises:
        ValueError: empty text, an unknown convention, a bad direction, or max_words < 1.
    """
    if isinstance(max_words, bool) or not isinstance(max_words, int) or max_words < 1:
        raise ValueError(f"max_words must be a positive integer, got {max_words!r}")
    warnings: list[str] = []
    normalised, truncation = _truncate(normalise_prompt(text), max_words)
    if truncation:
        warnings.append(truncation)
    swap, side_note = side_mirroring(convention, spec.side_convention, column_direction_ras)
    mirrored = swap and names_a_side(normalised)
    if mirrored:
        normalised = swap_sides(normalised)
    elif swap:
        side_note += " (the prompt names no side)"
    vocabulary = set(spec.vocabulary)
    unknown = [w for w in dict.fromkeys(content_words(normalised)) if w not in vocabulary]
    if vocabulary and unknown:
        warnings.append(
            f"the model was not trained for: {', '.join(unknown)} (words its training "
            "descriptions never used); the mask may be meaningless for this prompt"
        )
    for message in warnings:
        logger.debug("prompt %r: %s", text, message)
    return PreparedPrompt(
        original=text,
        text=normalised,
        convention=convention,
        mirrored=mirrored,
        warnings=tuple(warnings),
        side_note=side_note,
    )
