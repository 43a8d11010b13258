"""The side convention of a training set: which sides its descriptions' "left" and "right" name.

Training reads descriptions in the model's convention, the image's sides (`MODEL_CONVENTION`,
what QaTa's descriptions name). A set says its convention in one of two places: a
`Convention` column of its CSV (TeViA's Slicer export writes one on every row), or the data
config's `side_convention`. A set that says neither is refused, since training on the
opposite sides teaches the model the opposite side, silently. A set in the patient's
convention is converted: its PNG slices carry no orientation, so the standard chest
radiograph display is assumed (the patient's right on the image's left), and "left" and
"right" are swapped.
"""

from __future__ import annotations

import csv
from pathlib import Path

from tevia.prompts import CONVENTIONS

__all__ = ["CONVENTION_COLUMN", "MODEL_CONVENTION", "csv_convention", "set_convention"]

CONVENTION_COLUMN = "Convention"
MODEL_CONVENTION = "image"


def csv_convention(csv_path: str | Path) -> str | None:
    """The convention a CSV's `Convention` column names, or None when it has no such column.

    Raises:
        ValueError: the column holds an unknown value, or different values on different rows
            (names the rows).
    """
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if CONVENTION_COLUMN not in (reader.fieldnames or []):
            return None
        seen: dict[str, int] = {}
        for number, record in enumerate(reader, start=2):
            value = (record[CONVENTION_COLUMN] or "").strip()
            if value not in CONVENTIONS:
                raise ValueError(f"{csv_path} row {number}: {CONVENTION_COLUMN} must be one of {CONVENTIONS}, "
                                 f"got {value!r}")
            seen.setdefault(value, number)
    if len(seen) > 1:
        rows = ", ".join(f"{value!r} first on row {row}" for value, row in seen.items())
        raise ValueError(f"{csv_path}: the {CONVENTION_COLUMN} column mixes conventions ({rows}); "
                         "export the rows again in one convention")
    return next(iter(seen), None)


def set_convention(csv_path: str | Path, configured: str = "") -> str:
    """The side convention of a training CSV: its `Convention` column, else the configured one.

    Args:
        csv_path: the split's CSV.
        configured: the data config's `side_convention` ("image", "patient" or "" for unknown).

    Returns:
        "image" or "patient".

    Raises:
        ValueError: unknown (neither the CSV nor the config says), a configured value that is
            not a convention, or a config that contradicts the CSV's column.
    """
    if configured and configured not in CONVENTIONS:
        raise ValueError(f"data.side_convention must be one of {CONVENTIONS} (or empty), got {configured!r}")
    in_csv = csv_convention(csv_path)
    if in_csv and configured and in_csv != configured:
        raise ValueError(f"{csv_path} says its descriptions name {in_csv} sides ({CONVENTION_COLUMN} column) but "
                         f"data.side_convention={configured}: remove the setting or fix the CSV")
    found = in_csv or configured
    if not found:
        raise ValueError(
            f"the side convention of {csv_path} is unknown: say whether its descriptions' 'left' and 'right' "
            "name the image's sides (data.side_convention=image, as QaTa-COV19 and covid-ct-slices) or the "
            "patient's (data.side_convention=patient, converted to image sides assuming the standard chest "
            f"radiograph display), or add a {CONVENTION_COLUMN} column (TeViA's Slicer export writes one)")
    return found
