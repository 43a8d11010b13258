"""Reading images and volumes: NIfTI, NRRD, MHA, PNG/JPEG, DICOM series folders, raw .npy + geometry.

Every reader returns an ITK image (2D or 3D, scalar pixels) plus a list of warnings, and turns
each problem into an :class:`~tevia.volume.errors.InputError` (or ``FileNotFoundError``) whose
message says what was wrong and what to do.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from tevia.volume.completeness import check_complete
from tevia.volume.errors import BadInputError, UnsupportedFormatError, VolumeTooLargeError
from tevia.volume.geometry import image_from_array

__all__ = [
    "READ_EXTENSIONS",
    "DICOM_MODALITY",
    "available_memory_bytes",
    "check_memory",
    "component_bytes",
    "dicom_series_files",
    "file_extension",
    "read_image",
    "read_raw_volume",
    "read_input",
    "input_signature",
]

log = logging.getLogger(__name__)

READ_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg",
                   ".dcm", ".tif", ".tiff", ".bmp")
DICOM_MODALITY = "0008|0060"
"""Metadata key of the DICOM Modality (CT, MR, CR, DX, ...), kept on images read from DICOM."""
_RGB_FORMATS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# Bytes held per voxel while segmenting, besides the input: the uint8 labelmap, one uint8 mask
# per post-processing step, and the output writer's copy.
_WORK_BYTES_PER_VOXEL = 3
# A file changed within this many seconds may change again without a new timestamp (coarse
# file-system clocks: ext4 a few ms, FAT 2 s), so its signature is not trusted yet.
SETTLE_SECONDS = 2.0


def file_extension(path: str | os.PathLike) -> str:
    """The lower-case extension, double ones included (".nii.gz", ".seg.nrrd")."""
    name = Path(path).name.lower()
    for double in (".nii.gz", ".seg.nrrd"):
        if name.endswith(double):
            return double
    return Path(name).suffix


def available_memory_bytes() -> int:
    """Memory the process may still use: MemAvailable from /proc/meminfo, else physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3


def check_memory(size: tuple[int, ...], bytes_per_voxel: int, budget_bytes: int | None = None) -> None:
    """Refuse a volume whose voxels plus the pipeline's per-voxel outputs exceed the budget.

    Slices stream through the model in batches, so only whole-volume arrays count here: the
    input voxels and the uint8 outputs.

    Raises:
        VolumeTooLargeError: with the sizes and what to do.
    """
    voxels = int(np.prod(size, dtype=np.int64))
    needed = voxels * (bytes_per_voxel + _WORK_BYTES_PER_VOXEL)
    budget = available_memory_bytes() if budget_bytes is None else int(budget_bytes)
    if needed > budget:
        raise VolumeTooLargeError(
            f"the volume of size {'x'.join(map(str, size))} ({voxels} voxels) needs about "
            f"{needed / 1024**3:.1f} GiB but only {budget / 1024**3:.1f} GiB are available: crop or "
            "downsample it (e.g. Slicer's Crop Volume module) and try again"
        )


def component_bytes(pixel_id: int) -> int:
    """Bytes per component of an ITK pixel type, from its name ("vector of 16-bit ...")."""
    match = re.search(r"(\d+)-bit", sitk.GetPixelIDValueAsString(pixel_id))
    return int(match.group(1)) // 8 if match else 8


def _to_scalar(image: sitk.Image, extension: str, warnings: list[str]) -> sitk.Image:
    """A scalar image: RGB(A) pictures become luminance, other vectors keep their first component."""
    components = image.GetNumberOfComponentsPerPixel()
    if components == 1:
        return image
    if extension in _RGB_FORMATS and components in (3, 4):
        channels = [sitk.VectorIndexSelectionCast(image, c, sitk.sitkFloat32) for c in range(3)]
        gray = channels[0] * 0.299 + channels[1] * 0.587 + channels[2] * 0.114
        warnings.append(f"the image has {components} colour channels: converted to grayscale")
        return sitk.Cast(sitk.Round(gray), sitk.sitkUInt8)
    warnings.append(f"the volume has {components} components per voxel: only the first is segmented")
    return sitk.VectorIndexSelectionCast(image, 0)


def _check_dimension(dimension: int, size: tuple[int, ...], source: str) -> None:
    if dimension == 4 and size[3] == 1:
        return
    if dimension not in (2, 3):
        raise BadInputError(
            f"{source} is {dimension}D (size {'x'.join(map(str, size))}); only 2D images and 3D "
            "volumes are supported: extract one 3D frame first (e.g. with Slicer's Sequences module)"
        )


def _drop_singleton_4d(image: sitk.Image) -> sitk.Image:
    if image.GetDimension() == 4:
        size = list(image.GetSize())
        return sitk.Extract(image, size[:3] + [0], [0, 0, 0, 0])
    return image


def dicom_series_files(folder: str | os.PathLike, warnings: list[str] | None = None) -> tuple[str, ...]:
    """The files of the DICOM series a folder is read as: its largest series, in slice order
    (the order of the read volume's K index).

    Raises:
        UnsupportedFormatError: the folder holds no DICOM series.
    """
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise UnsupportedFormatError(
            f"the folder {folder} holds no DICOM series: give a DICOM series folder or an image file "
            f"({', '.join(READ_EXTENSIONS)})"
        )
    files_per_series = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid)
                        for sid in series_ids}
    series_id = max(series_ids, key=lambda sid: len(files_per_series[sid]))
    if len(series_ids) > 1 and warnings is not None:
        warnings.append(f"the folder holds {len(series_ids)} DICOM series: read the largest, "
                        f"{series_id} ({len(files_per_series[series_id])} files)")
    return tuple(files_per_series[series_id])


def _read_dicom_folder(folder: Path, budget_bytes: int | None, warnings: list[str]) -> sitk.Image:
    files = dicom_series_files(folder, warnings)
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    first.ReadImageInformation()
    size = first.GetSize()[:2] + (len(files),)
    check_memory(size, first.GetNumberOfComponents() * 4, budget_bytes)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise BadInputError(f"could not read the DICOM series in {folder}: {error}") from error
    image = _to_scalar(image, ".dcm", warnings)
    if first.HasMetaDataKey(DICOM_MODALITY):  # the modality tells the domain check what this is
        image.SetMetaData(DICOM_MODALITY, first.GetMetaData(DICOM_MODALITY))
    return image


def read_image(path: str | os.PathLike, budget_bytes: int | None = None) -> tuple[sitk.Image, list[str]]:
    """Read an image file or a DICOM series folder into a scalar 2D or 3D ITK image.

    Args:
        path: A file (NIfTI, NRRD, MHA/MHD, PNG, JPEG, TIFF, BMP, single DICOM) or a folder
            holding a DICOM series.
        budget_bytes: Memory the volume may use (default: the memory available now).

    Returns:
        (image, warnings): the image in ITK's LPS frame and what was changed on the way.

    Raises:
        FileNotFoundError: the path does not exist.
        UnsupportedFormatError: unknown extension, or a file no reader understands.
        BadInputError: a corrupt file or a 4D volume.
        TruncatedVolumeError: a file whose data are shorter than its header declares (a
            :class:`BadInputError`).
        VolumeTooLargeError: the volume cannot fit the memory budget.
    """
    path = Path(path)
    warnings: list[str] = []
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if path.is_dir():
        return _read_dicom_folder(path, budget_bytes, warnings), warnings
    extension = file_extension(path)
    if extension not in READ_EXTENSIONS:
        raise UnsupportedFormatError(
            f"cannot read {path.name}: the extension {extension or '(none)'!r} is not supported; "
            f"use one of {', '.join(READ_EXTENSIONS)}, a DICOM series folder, or .npy + geometry JSON"
        )
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        check_complete(path)  # a cut file explains a header ITK cannot read better than "corrupt"
        raise BadInputError(f"cannot read {path}: the file is corrupt or not a valid "
                            f"{extension} file ({str(error).strip().splitlines()[-1]})") from error
    size = reader.GetSize()
    _check_dimension(reader.GetDimension(), size, str(path))
    check_memory(size, reader.GetNumberOfComponents() * component_bytes(reader.GetPixelID()),
                 budget_bytes)
    if extension in (".nii", ".nii.gz"):
        check_complete(path)  # ITK fills the missing voxels of a cut NIfTI with zeros, without a word
    try:
        image = reader.Execute()
    except RuntimeError as error:
        check_complete(path)  # ITK refuses a cut NRRD/MetaImage: say so with the bytes declared and held
        raise BadInputError(f"cannot read {path}: the file is corrupt or truncated "
                            f"({str(error).strip().splitlines()[-1]})") from error
    return _to_scalar(_drop_singleton_4d(image), extension, warnings), warnings


def read_raw_volume(npy_path: str | os.PathLike, geometry_path: str | os.PathLike,
                    budget_bytes: int | None = None) -> tuple[sitk.Image, list[str]]:
    """Read raw voxels (.npy, numpy K, J, I order) with a geometry JSON into a 3D ITK image.

    The geometry JSON is ``{"shape_kji": [K, J, I], "ijk_to_ras": 4x4 nested list}`` (Slicer's
    ``arrayFromVolume`` order and ``GetIJKToRASMatrix``).

    Raises:
        FileNotFoundError: a file is missing.
        BadInputError: unreadable .npy or JSON, a shape mismatch, or a bad matrix.
        VolumeTooLargeError: the volume cannot fit the memory budget.
    """
    npy_path, geometry_path = Path(npy_path), Path(geometry_path)
    for required in (npy_path, geometry_path):
        if not required.is_file():
            raise FileNotFoundError(f"input not found: {required}")
    try:
        geometry = json.loads(geometry_path.read_text(encoding="utf-8"))
        matrix = np.asarray(geometry["ijk_to_ras"], dtype=float)
    except (ValueError, KeyError, TypeError) as error:
        raise BadInputError(f"bad geometry JSON {geometry_path}: expected {{\"shape_kji\": [K, J, I], "
                            f"\"ijk_to_ras\": 4x4 list}} ({error})") from error
    try:
        voxels = np.load(npy_path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as error:
        raise BadInputError(f"cannot read {npy_path} as a .npy array: {error}") from error
    if voxels.ndim != 3 or voxels.dtype.kind not in "biuf":
        raise BadInputError(f"{npy_path} must hold a 3D numeric array (K, J, I), got shape "
                            f"{voxels.shape} and dtype {voxels.dtype}")
    expected = geometry.get("shape_kji")
    if expected is not None and tuple(expected) != voxels.shape:
        raise BadInputError(f"{npy_path} has shape {voxels.shape} but the geometry says "
                            f"shape_kji {tuple(expected)}")
    check_memory(voxels.shape[::-1], voxels.dtype.itemsize, budget_bytes)
    array = np.ascontiguousarray(voxels, dtype=np.uint8 if voxels.dtype == bool else None)
    try:
        return image_from_array(array, matrix), []
    except ValueError as error:
        raise BadInputError(f"bad geometry in {geometry_path}: {error}") from error


def read_input(spec: str | os.PathLike | dict, budget_bytes: int | None = None) -> tuple[sitk.Image, list[str]]:
    """Read a worker/CLI input: a path, or ``{"npy": path, "geometry": path}`` for raw voxels."""
    if isinstance(spec, dict):
        if set(spec) != {"npy", "geometry"}:
            raise BadInputError(f"input must be a path or {{\"npy\": path, \"geometry\": path}}, "
                                f"got keys {sorted(spec)}")
        return read_raw_volume(spec["npy"], spec["geometry"], budget_bytes)
    if not isinstance(spec, (str, os.PathLike)) or not str(spec):
        raise BadInputError(f"input must be a path or {{\"npy\": path, \"geometry\": path}}, got {spec!r}")
    return read_image(spec, budget_bytes)


def _file_state(path: Path) -> tuple:
    status = path.stat()
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


def input_signature(spec: str | os.PathLike | dict, now: float | None = None) -> tuple | None:
    """What identifies the current content of an input without reading it, to reuse a read.

    The signature holds, for each file the input reads (the file; the .npy and geometry JSON;
    every file of a DICOM folder), its resolved path, device, inode, size and modification and
    status-change times in nanoseconds: rewriting, replacing, renaming onto or touching a file
    changes it.

    Args:
        spec: A :func:`read_input` input.
        now: The current time (seconds since the epoch; default ``time.time()``).

    Returns:
        The signature, or None when it cannot be trusted: a file is missing or was changed less
        than :data:`SETTLE_SECONDS` ago (it could change again within the file system's clock
        resolution without a new timestamp).
    """
    now = time.time() if now is None else now
    try:
        if isinstance(spec, dict):
            paths = [Path(spec[key]) for key in sorted(spec)]
        else:
            paths = [Path(spec)]
            if paths[0].is_dir():
                paths += sorted(entry for entry in paths[0].iterdir() if entry.is_file())
        states = [(str(path.resolve()), *_file_state(path)) for path in paths]
    except (OSError, TypeError, KeyError):
        return None
    newest = max(max(state[-2:]) for state in states) / 1e9
    if now - newest < SETTLE_SECONDS:
        return None
    return tuple(states)
