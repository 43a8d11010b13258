"""The annotator loop: add an edited segment and its prompt to a fine-tuning data set.

Writes the slices of a volume that hold the segment, in the CSV + folders layout that
`tevia train --init` and `tevia.data.dataset.CSVSegmentationDataset` read (the QaTa-COV19
layout):
```
<dataset>/<split>.csv                 columns Image,Description (appended, never rewritten)
<dataset>/<Split>/Images/<name>.png   8-bit grayscale slice
<dataset>/<Split>/GTs/mask_<name>.png 0/255 mask
```
Appending never overwrites a row or a file: names that exist get a numeric suffix, each file
is written to a temporary name and renamed, and the CSV is replaced atomically.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

__all__ = ["export_training_slices", "scale_to_uint8", "worker_slicing", "CSV_COLUMNS"]

CSV_COLUMNS = ("Image", "Description")


def scale_to_uint8(voxels: np.ndarray, low_percentile: float = 0.5, high_percentile: float = 99.5) -> np.ndarray:
    """Scale intensities to 0..255 between two percentiles of the whole volume (uint8, same shape)."""
    low, high = np.percentile(voxels, [low_percentile, high_percentile])
    if high <= low:
        return np.zeros(voxels.shape, np.uint8)
    scaled = (voxels.astype(np.float32) - low) / (high - low)
    return np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)


def worker_slicing(ijk_to_ras: np.ndarray, shape_kji: tuple[int, int, int],
                   slice_axis: str = "axial") -> Callable[[np.ndarray], np.ndarray]:
    """The slicing the worker uses, so that training images look like what the model sees.

    Args:
        ijk_to_ras: the volume's 4x4 IJK-to-RAS matrix.
        shape_kji: the volume's (K, J, I) shape.
        slice_axis: "axial", "coronal" or "sagittal" in the patient's anatomy.

    Returns:
        A function from a (K, J, I) array to its (N, H, W) display-oriented slices
        (`tevia.volume.geometry.SliceLayout.view`; that module needs only numpy and SimpleITK).
    """
    from tevia.volume.geometry import image_from_array, slice_layout

    return slice_layout(image_from_array(np.zeros(shape_kji, np.uint8), ijk_to_ras), slice_axis).view


def _safe_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
    return stem or "volume"


def _write_png(array_2d: np.ndarray, path: Path) -> None:
    from tevia.files import atomic_path

    with atomic_path(path, ".png") as temporary:
        sitk.WriteImage(sitk.GetImageFromArray(array_2d), str(temporary))


def _append_rows(csv_path: Path, rows: list[tuple[str, str]]) -> None:
    """Append rows to a CSV by writing the old content + new rows to a temp file, then renaming."""
    old = csv_path.read_text(encoding="utf-8-sig") if csv_path.exists() else ""
    if old:
        header = next(csv.reader(io.StringIO(old)), [])
        if tuple(header) != CSV_COLUMNS:
            raise ValueError(f"{csv_path} has columns {header}, expected {list(CSV_COLUMNS)}: "
                             "choose another data set folder")
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
                           dataset_dir: str | Path, name: str, split: str = "train",
                           view: Callable[[np.ndarray], np.ndarray] | None = None) -> list[str]:
    """Append the slices holding a segment to a data set folder.

    Args:
        voxels_kji: the volume, shape (K, J, I), any numeric dtype.
        mask_kji: the segment, same shape, nonzero inside.
        prompt: the text that describes the segment (the Description column).
        dataset_dir: the data set folder (created when missing).
        name: base name of the files (the volume's name; made file-system safe).
        split: the CSV's name, e.g. "train" or "val"; files go to `<Split>/`.
        view: maps a (K, J, I) array to the (N, H, W) stack of 2D slices the model sees
            (the same slicing the worker uses); slices along K unchanged when None.

    Returns:
        The Image column values (mask file names) of the rows added; empty when the mask is empty.

    Raises:
        ValueError: mismatched shapes, an empty prompt or a CSV with other columns.
    """
    if voxels_kji.shape != mask_kji.shape or voxels_kji.ndim != 3:
        raise ValueError(f"mask_kji shape {mask_kji.shape} must equal voxels_kji shape {voxels_kji.shape} (3D)")
    description = " ".join(prompt.split())
    if not description:
        raise ValueError(f"prompt must contain text, got {prompt!r}")
    view = view or (lambda array: array)
    images, masks = view(scale_to_uint8(voxels_kji)), view(mask_kji != 0)
    dataset_dir = Path(dataset_dir)
    split_dir = dataset_dir / split.capitalize()
    (split_dir / "Images").mkdir(parents=True, exist_ok=True)
    (split_dir / "GTs").mkdir(parents=True, exist_ok=True)
    csv_path = dataset_dir / f"{split}.csv"
    stem = _safe_stem(name)
    rows: list[tuple[str, str]] = []
    for index in np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1)):
        image_name = f"{stem}_s{index:04d}"
        suffix = 1
        while (split_dir / "Images" / f"{image_name}.png").exists() or \
                (split_dir / "GTs" / f"mask_{image_name}.png").exists():
            suffix += 1
            image_name = f"{stem}_s{index:04d}_{suffix}"
        _write_png(images[index], split_dir / "Images" / f"{image_name}.png")
        _write_png((masks[index] * 255).astype(np.uint8), split_dir / "GTs" / f"mask_{image_name}.png")
        rows.append((f"mask_{image_name}.png", description))
    if rows:
        _append_rows(csv_path, rows)
    return [image for image, _ in rows]
