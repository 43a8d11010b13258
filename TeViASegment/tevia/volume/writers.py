"""Writing labelmaps: NIfTI/NRRD/MHA/PNG, Slicer .seg.nrrd, raw .npy, DICOM SEG, each with a JSON sidecar.

Every file is written to a temporary file next to its destination and renamed into place, so a
failure or a cancel never leaves a half-written file under the user's name. The sidecar of
``x.nii.gz`` is ``x.tevia.json``: it cannot replace a BIDS sidecar ``x.json`` or a raw input's
geometry ``x.json``, and it never replaces an input or a ``.tevia.json`` file that TeViA did not
write (its ``tevia_sidecar`` field marks the ones it did).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from tevia.files import atomic_path
from tevia.volume.errors import BadInputError, UnsupportedFormatError
from tevia.volume.bounds import nonzero_bounds
from tevia.volume.geometry import as_3d, ijk_to_lps
from tevia.volume.io import file_extension

__all__ = [
    "WRITE_EXTENSIONS",
    "FORMATS",
    "SEGMENT_COLORS",
    "check_output_path",
    "SIDECAR_SUFFIX",
    "sidecar_path",
    "labelmap_block",
    "write_labelmap",
]

WRITE_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".mha", ".seg.nrrd", ".npy", ".png", ".dcm")
FORMATS = {**{extension.lstrip("."): extension for extension in WRITE_EXTENSIONS if extension != ".dcm"},
           "dicom-seg": ".dcm"}
"""Output format names (``tevia predict --format``) -> extension; a .dcm output is a DICOM SEG."""
SEGMENT_COLORS = (
    (0.90, 0.30, 0.24), (0.18, 0.55, 0.87), (0.30, 0.75, 0.35), (0.95, 0.77, 0.06),
    (0.61, 0.35, 0.71), (0.10, 0.74, 0.74), (0.95, 0.50, 0.13), (0.91, 0.40, 0.62),
)
"""RGB colours (0..1) of segments 1, 2, ... in .seg.nrrd files, cycling."""
SIDECAR_SUFFIX = ".tevia.json"
_SIDECAR_MARK = "tevia_sidecar"  # the field (value: its format version) that marks a sidecar TeViA wrote
_MAX_SIDECAR_BYTES = 16 * 1024**2


def sidecar_path(output: str | os.PathLike) -> Path:
    """The JSON sidecar of an output: its name with the (double) extension replaced by .tevia.json."""
    output = Path(output)
    extension = file_extension(output)
    return output.with_name(output.name[: len(output.name) - len(extension)] + SIDECAR_SUFFIX)


def _written_by_tevia(path: Path) -> bool:
    """Whether an existing file is a sidecar TeViA wrote (a JSON object with the sidecar mark)."""
    try:
        if not path.is_file() or path.stat().st_size > _MAX_SIDECAR_BYTES:
            return False
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and _SIDECAR_MARK in content


def _same_file(a: Path, b: Path) -> bool:
    return a.exists() and b.exists() and os.path.samefile(a, b)


def check_output_path(output: str | os.PathLike, image: sitk.Image | None = None,
                      inputs: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Check an output path before any work is done.

    Raises:
        UnsupportedFormatError: the extension cannot be written (or .png for a 3D volume, or
            .dcm, a DICOM SEG, for an input that is not DICOM).
        FileNotFoundError: the output folder does not exist.
        BadInputError: the output or its sidecar (:func:`sidecar_path`) would overwrite one of
            ``inputs``, or the sidecar would replace a file that TeViA did not write.
    """
    output = Path(output)
    extension = file_extension(output)
    if extension not in WRITE_EXTENSIONS:
        raise UnsupportedFormatError(f"cannot write {output.name}: use one of {', '.join(WRITE_EXTENSIONS)}")
    if extension == ".png" and image is not None and image.GetDimension() == 3 and min(image.GetSize()) > 1:
        raise UnsupportedFormatError(f"cannot write the 3D volume of size {image.GetSize()} as {output.name}: "
                                     "PNG holds one 2D slice; use .nii.gz, .nrrd or .seg.nrrd")
    if extension == ".dcm" and inputs:
        from tevia.volume.dicom_seg import check_dicom_source

        check_dicom_source(inputs[0])
    if not output.parent.is_dir():
        raise FileNotFoundError(f"the output folder {output.parent} does not exist: create it first")
    sidecar = sidecar_path(output)
    for source in map(Path, inputs):
        if _same_file(source, output):
            raise BadInputError(f"the output {output} is the input file: choose another output path")
        if _same_file(source, sidecar):
            raise BadInputError(f"the output's JSON sidecar {sidecar} is the input file {source}: choose another "
                                "output name")
    if (sidecar.exists() or sidecar.is_symlink()) and not _written_by_tevia(sidecar):
        raise BadInputError(f"{sidecar} exists and TeViA did not write it, but it is where the JSON sidecar of "
                            f"{output.name} goes: move that file or choose another output name")
    return output


def _write_seg_nrrd(labelmap: sitk.Image, labels: dict[int, str], path: Path) -> None:
    try:
        import slicerio
    except ImportError as error:
        raise UnsupportedFormatError("writing .seg.nrrd needs the slicerio package (pip install "
                                     "slicerio), or write .nrrd/.nii.gz instead") from error
    volume = as_3d(labelmap)
    segments = [
        {"id": f"Segment_{value}", "labelValue": int(value), "layer": 0, "name": name,
         "color": list(SEGMENT_COLORS[(value - 1) % len(SEGMENT_COLORS)]),
         "nameAutoGenerated": False, "colorAutoGenerated": False, "status": "inprogress"}
        for value, name in sorted(labels.items())
    ]
    segmentation = {
        "voxels": sitk.GetArrayFromImage(volume).transpose(2, 1, 0),
        "ijkToLPS": ijk_to_lps(volume),
        "segments": segments,
    }
    slicerio.write_segmentation(str(path), segmentation)


def _write_dicom_seg(labelmap: sitk.Image, labels: dict[int, str], source: str | os.PathLike | None,
                     metadata: dict[str, Any], path: Path) -> None:
    if source is None:
        raise UnsupportedFormatError("a DICOM SEG (.dcm) references its source DICOM series: give the input")
    try:
        import highdicom  # noqa: F401  (the check that the extra is installed)
    except ImportError as error:
        raise UnsupportedFormatError('writing a DICOM SEG needs highdicom: pip install "tevia[dicom]", or write '
                                     '.nii.gz, .nrrd or .seg.nrrd instead') from error
    from tevia.volume.dicom_seg import write_dicom_seg

    write_dicom_seg(labelmap, labels, source, path, metadata.get("convention") or "patient",
                    str(metadata.get("model") or ""))


def _writer(extension: str, labelmap: sitk.Image, labels: dict[int, str], block: tuple[slice, ...] = (),
            source: str | os.PathLike | None = None, metadata: dict[str, Any] | None = None) -> Callable[[Path], None]:
    if extension == ".dcm":
        return lambda path: _write_dicom_seg(labelmap, labels, source, metadata or {}, path)
    if extension == ".seg.nrrd":
        return lambda path: _write_seg_nrrd(labelmap, labels, path)
    if extension == ".npy":
        def save_npy(path: Path) -> None:
            volume = as_3d(labelmap)  # alive while its array view is written: no copy of the voxels
            array = sitk.GetArrayViewFromImage(volume)[block]
            if array.flags.c_contiguous:
                np.save(path, array, allow_pickle=False)
                return
            # A block, slice by slice: np.save would copy it whole first, or step through it in small runs.
            with open(path, "wb") as file:
                np.lib.format.write_array_header_1_0(file, np.lib.format.header_data_from_array_1_0(array))
                for plane in array:
                    file.write(np.ascontiguousarray(plane).data)

        return save_npy
    if extension == ".png":
        size = labelmap.GetSize()
        image = labelmap if labelmap.GetDimension() == 2 else sitk.Extract(labelmap, [*size[:2], 0], [0, 0, 0])
        return lambda path: sitk.WriteImage(image, str(path))
    return lambda path: sitk.WriteImage(labelmap, str(path), useCompression=True)


def labelmap_block(labelmap: sitk.Image) -> tuple[tuple[int, int], ...]:
    """[start, stop) along K, J, I of a labelmap's labelled voxels (a 2D image is one slice)."""
    volume = as_3d(labelmap)  # alive while its array view is scanned
    return nonzero_bounds(sitk.GetArrayViewFromImage(volume))


def write_labelmap(labelmap: sitk.Image, output: str | os.PathLike, labels: dict[int, str],
                   metadata: dict[str, Any], crop: tuple[tuple[int, int], ...] | None = None,
                   source: str | os.PathLike | None = None) -> list[Path]:
    """Write a uint8 labelmap and its JSON sidecar atomically: both are in place, or neither is new.

    Args:
        labelmap: uint8 image with the input's geometry (label i = segment i, 0 = background).
        output: Destination; the extension picks the format (:data:`WRITE_EXTENSIONS`). .npy
            holds the numpy K, J, I array (a 2D image as one slice); .seg.nrrd holds named,
            coloured segments that Slicer and slicerio read.
        labels: Label value -> segment name (the user's prompt).
        metadata: Extra sidecar fields (prompts, convention, warnings, ...).
        crop: .npy only: [start, stop) along K, J, I of the block of the array to write
            (:func:`labelmap_block` gives the block that holds every labelled voxel); the
            sidecar records where it starts (``crop_origin``) and the whole array's ``shape``.
            A client that imports the labels into its own copy of the volume (Slicer) then
            reads and scans only that block instead of the whole volume.
        source: the input the labelmap was made from; a .dcm output (a DICOM SEG,
            tevia.volume.dicom_seg) references it and needs it to be a DICOM series or file.

    Returns:
        The paths written: the output, then its sidecar (:func:`sidecar_path`).

    Raises:
        The errors of :func:`check_output_path`.
    """
    dicom_seg = file_extension(output) == ".dcm" and source is not None
    output = check_output_path(output, labelmap, inputs=(source,) if dicom_seg else ())
    sidecar = sidecar_path(output)
    content = {_SIDECAR_MARK: 1, "output": output.name, "labels": {str(k): v for k, v in sorted(labels.items())},
               **metadata}
    block: tuple[slice, ...] = ()
    if crop is not None:
        if file_extension(output) != ".npy":
            raise UnsupportedFormatError(f"only a .npy labelmap can be cropped, got {output.name!r}")
        block = tuple(slice(start, stop) for start, stop in crop)
        content.update(crop_origin=[start for start, _ in crop], shape=list(as_3d(labelmap).GetSize())[::-1])
    with (atomic_path(output, file_extension(output)) as temporary_output,
          atomic_path(sidecar, SIDECAR_SUFFIX) as temporary_sidecar):
        _writer(file_extension(output), labelmap, labels, block, source, metadata)(temporary_output)
        temporary_sidecar.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return [output, sidecar]
