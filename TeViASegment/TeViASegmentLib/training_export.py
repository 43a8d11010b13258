"""The annotator loop: add an edited segment and its prompt to a fine-tuning data set.

Writes the slices of a volume that hold the segment, in the CSV + folders layout that
`tevia train --init` and `tevia.training.data.dataset.CSVSegmentationDataset` read (the QaTa-COV19
layout):
```
<dataset>/<split>.csv                 columns CSV_COLUMNS (appended, never rewritten)
<dataset>/<Split>/Images/<name>.png   8-bit grayscale slice
<dataset>/<Split>/GTs/mask_<name>.png 0/255 mask
```
The set means what the annotator meant: `Description` is the text the model encodes for the
prompt on that slice (`tevia.prompts.prepare_prompt`: abbreviations normalised, "left" and
"right" turned into the model's side convention using the slice's orientation), `Convention`
names that convention (what `tevia train` reads), and `Prompt` and `PromptConvention` keep
what the annotator typed and the sides it named. `Volume` names the volume each slice comes
from, so that validation can hold out whole volumes. (tevia.prompts and tevia.volume.geometry
need only the standard library, numpy and SimpleITK: no torch in Slicer's process.)

Appending never overwrites a row or a file: names that exist get a numeric suffix, each file
is written to a temporary name and renamed, and the CSV is replaced atomically.
"""

from __future__ import annotations

import csv
import io
import re
import types
from pathlib import Path

import numpy as np
import SimpleITK as sitk

__all__ = ["export_training_slices", "model_description", "scale_to_uint8", "worker_layout", "CSV_COLUMNS"]

CSV_COLUMNS = ("Image", "Description", "Convention", "Prompt", "PromptConvention", "Volume")


def scale_to_uint8(voxels: np.ndarray, low_percentile: float = 0.5, high_percentile: float = 99.5) -> np.ndarray:
    """Scale intensities to 0..255 between two percentiles of the whole volume (uint8, same shape)."""
    low, high = np.percentile(voxels, [low_percentile, high_percentile])
    if high <= low:
        return np.zeros(voxels.shape, np.uint8)
    scaled = (voxels.astype(np.float32) - low) / (high - low)
    return np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)


def worker_layout(ijk_to_ras: np.ndarray, shape_kji: tuple[int, int, int], slice_axis: str = "axial"):
    """The slicing the worker uses, so that training images look like what the model sees.

    Args:
        ijk_to_ras: the volume's 4x4 IJK-to-RAS matrix.
        shape_kji: the volume's (K, J, I) shape.
        slice_axis: "axial", "coronal" or "sagittal" in the patient's anatomy.

    Returns:
        The `tevia.volume.geometry.SliceLayout`: `.view` maps a (K, J, I) array to its (N, H, W)
        display-oriented slices; `.column_direction_ras` is the RAS direction of their columns.
    """
    from tevia.volume.geometry import image_from_array, slice_layout

    return slice_layout(image_from_array(np.zeros(shape_kji, np.uint8), ijk_to_ras), slice_axis)


def model_description(prompt: str, convention: str, model_convention: str,
                      column_direction_ras: tuple[float, float, float] | None) -> str:
    """The text the model encodes for a prompt on slices whose columns run along a RAS direction.

    Args:
        prompt: what the annotator typed.
        convention: the sides the prompt names, "patient" or "image".
        model_convention: the sides the model's training text names.
        column_direction_ras: RAS direction of increasing column index of the slices, or None
            (unknown: the standard chest radiograph display is assumed).

    Raises:
        ValueError: an empty prompt or an unknown convention.
    """
    from tevia.prompts import prepare_prompt

    spec = types.SimpleNamespace(side_convention=model_convention, vocabulary=[])
    return prepare_prompt(prompt, spec, convention, column_direction_ras).text


def _safe_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
    return stem or "volume"


def _write_png(array_2d: np.ndarray, path: Path) -> None:
    from tevia.files import atomic_path

    with atomic_path(path, ".png") as temporary:
        sitk.WriteImage(sitk.GetImageFromArray(array_2d), str(temporary))


def _existing_csv(csv_path: Path) -> str:
    """The CSV's text ("" when missing) after checking its columns are CSV_COLUMNS."""
    old = csv_path.read_text(encoding="utf-8-sig") if csv_path.exists() else ""
    if old:
        header = next(csv.reader(io.StringIO(old)), [])
        if tuple(header) != CSV_COLUMNS:
            raise ValueError(f"{csv_path} has columns {header}, expected {list(CSV_COLUMNS)} (a set exported "
                             "before side conventions were recorded, or another tool's): choose another data set folder")
    return old


def _append_rows(csv_path: Path, rows: list[tuple[str, ...]]) -> None:
    """Append rows to a CSV by writing the old content + new rows to a temp file, then renaming."""
    old = _existing_csv(csv_path)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if not old:
        writer.writerow(CSV_COLUMNS)
    elif not old.endswith("\n"):
        buffer.write("\n")
    writer.writerows(rows)
    from tevia.files import atomic_write_text

    atomic_write_text(csv_path, old + buffer.getvalue())


def export_training_slices(voxels_kji: np.ndarray, mask_kji: np.ndarray, prompt: str,
                           dataset_dir: str | Path, name: str, split: str = "train", layout=None,
                           convention: str = "patient", model_convention: str = "image") -> list[str]:
    """Append the slices holding a segment to a data set folder.

    Args:
        voxels_kji: the volume, shape (K, J, I), any numeric dtype.
        mask_kji: the segment, same shape, nonzero inside.
        prompt: the text that describes the segment, as the annotator typed it.
        dataset_dir: the data set folder (created when missing).
        name: the volume's name (the Volume column; file names use it made file-system safe).
        split: the CSV's name, e.g. "train" or "val"; files go to `<Split>/`.
        layout: the `SliceLayout` of the slices the model sees (`worker_layout`); when None,
            slices along K unchanged and an unknown orientation (standard display assumed).
        convention: the sides the prompt names, "patient" (the module's default) or "image".
        model_convention: the sides the model's training text names (its model.json's
            `side_convention`); the Description column is in this convention.

    Returns:
        The Image column values (mask file names) of the rows added; empty when the mask is empty.

    Raises:
        ValueError: mismatched shapes, an empty prompt, an unknown convention or a CSV with
            other columns (nothing is written then).
    """
    if voxels_kji.shape != mask_kji.shape or voxels_kji.ndim != 3:
        raise ValueError(f"mask_kji shape {mask_kji.shape} must equal voxels_kji shape {voxels_kji.shape} (3D)")
    original = " ".join(prompt.split())
    if not original:
        raise ValueError(f"prompt must contain text, got {prompt!r}")
    description = model_description(original, convention, model_convention,
                                    None if layout is None else layout.column_direction_ras)
    dataset_dir = Path(dataset_dir)
    csv_path = dataset_dir / f"{split}.csv"
    _existing_csv(csv_path)  # refuses a CSV with other columns before any file is written
    view = (lambda array: array) if layout is None else layout.view
    images, masks = view(scale_to_uint8(voxels_kji)), view(mask_kji != 0)
    split_dir = dataset_dir / split.capitalize()
    (split_dir / "Images").mkdir(parents=True, exist_ok=True)
    (split_dir / "GTs").mkdir(parents=True, exist_ok=True)
    stem = _safe_stem(name)
    rows: list[tuple[str, ...]] = []
    for index in np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1)):
        image_name = f"{stem}_s{index:04d}"
        suffix = 1
        while (split_dir / "Images" / f"{image_name}.png").exists() or \
                (split_dir / "GTs" / f"mask_{image_name}.png").exists():
            suffix += 1
            image_name = f"{stem}_s{index:04d}_{suffix}"
        _write_png(images[index], split_dir / "Images" / f"{image_name}.png")
        _write_png((masks[index] * 255).astype(np.uint8), split_dir / "GTs" / f"mask_{image_name}.png")
        rows.append((f"mask_{image_name}.png", description, model_convention, original, convention, name))
    if rows:
        _append_rows(csv_path, rows)
    return [row[0] for row in rows]
