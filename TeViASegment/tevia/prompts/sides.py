"""Side conventions: whether a prompt's "left" and "right" must be swapped for a model.

Frames: an image's column index is its I axis (numpy's last axis); "the image's left half"
means small column indices, as displayed with column 0 on the left. RAS: +x points to the
patient's Right, +y Anterior, +z Superior.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

__all__ = ["CONVENTIONS", "names_a_side", "side_mirroring", "swap_sides"]

CONVENTIONS = ("patient", "image")

_SIDE_WORD = re.compile(r"\b(left|right)\b")


def _check_convention(name: str, value: str) -> None:
    if value not in CONVENTIONS:
        raise ValueError(f"{name} must be one of {CONVENTIONS}, got {value!r}")


def _unit_vector(column_direction_ras: Sequence[float]) -> list[float]:
    problem = ValueError(
        "column_direction_ras must be 3 finite numbers of non-zero length (the RAS "
        f"direction of increasing column index), got {column_direction_ras!r}"
    )
    try:
        direction = [float(v) for v in column_direction_ras]
    except (TypeError, ValueError) as error:
        raise problem from error
    length = math.sqrt(sum(v * v for v in direction))
    if len(direction) != 3 or not math.isfinite(length) or length == 0:
        raise problem
    return [v / length for v in direction]


def side_mirroring(
    user_convention: str,
    model_convention: str,
    column_direction_ras: Sequence[float] | None = None,
) -> tuple[bool, str]:
    """Decide whether the prompt's left/right words must be swapped for the model.

    Conventions: "image" names the image's halves ("left" = small column index);
    "patient" names the patient's sides. They agree when the patient's left is on the
    image's left, i.e. when increasing column index points to the patient's Right (RAS
    x > 0). In the standard radiological display the column direction points to the
    patient's Left (RAS x < 0), so the image's left half is the patient's right and the
    conventions are mirrored.

    Args:
        user_convention: "patient" or "image": the sides the user names.
        model_convention: "patient" or "image": the sides the training text named.
        column_direction_ras: The direction, in RAS, of increasing column index (the I
            axis, 3 numbers), or None when unknown. Unknown, or columns that do not run
            mainly left-right, assumes the standard chest X-ray display.

    Returns:
        (mirrored, explanation): whether to swap left and right, and why.

    Raises:
        ValueError: a convention is unknown, or the direction is not 3 finite numbers
            of non-zero length.
    """
    _check_convention("user_convention", user_convention)
    _check_convention("model_convention", model_convention)
    if user_convention == model_convention:
        return False, f"the prompt and the model both name {user_convention} sides; no side rewrite"
    conventions = (
        f"the prompt names {user_convention} sides, "
        f"the model was trained on {model_convention} sides"
    )
    if column_direction_ras is None:
        return True, (
            f"{conventions}; image orientation unknown, assumed the standard chest X-ray "
            "display (patient's right on the image's left), so left and right must be swapped"
        )
    direction = _unit_vector(column_direction_ras)
    x = direction[0]
    shown = "[" + ", ".join(f"{v:.2f}" for v in direction) + "]"
    if abs(x) < 0.5:
        return True, (
            f"{conventions}; the image columns run along RAS {shown}, not left-right, so "
            "the image shows no left and right halves; assumed the standard chest X-ray "
            "display, so left and right must be swapped"
        )
    if x < 0:
        return True, (
            f"{conventions}; the image columns run towards the patient's left (RAS {shown}): "
            "the image's left half is the patient's right, so left and right must be swapped"
        )
    return False, (
        f"{conventions}; the image columns run towards the patient's right (RAS {shown}): "
        "the image's left half is the patient's left, so no side rewrite"
    )


def swap_sides(text: str) -> str:
    """Swap the words "left" and "right" in a normalised text ("left lung" -> "right lung")."""
    return _SIDE_WORD.sub(lambda m: "right" if m.group(1) == "left" else "left", text)


def names_a_side(text: str) -> bool:
    """Whether a normalised text contains the word "left" or "right"."""
    return _SIDE_WORD.search(text) is not None
