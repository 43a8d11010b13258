"""Volumes the page opens: uploads and files of the server's data folder, checked before Slicer reads them.

NRRD and NIfTI uploads go through the checks of `tevia serve` (tevia.serving.server.volume_io:
format from the first bytes, header, voxel count and memory budget before any voxel is
decoded), then the completeness check of the engine (a cut file is refused, never read as
zeros). MetaImage, PNG/JPEG X-rays and zipped DICOM series are checked by the engine's reader
(tevia.volume.io.read_image: header, dimensions, memory, completeness); a PNG/JPEG goes to
Slicer as the engine's scalar image of it, in NRRD. A zip is unpacked
with bounds (member count, total size, no path outside its folder). Every refusal is an
`UploadError` whose message says what was wrong and what to do; nothing is loaded then.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from tevia.serving.server.volume_io import VolumeError, inspect_upload, public_message
from tevia.volume.completeness import check_complete
from tevia.volume.errors import InputError
from tevia.volume.io import read_image

__all__ = ["UploadError", "UploadLimits", "CheckedVolume", "check_upload", "data_folder_files",
           "resolve_data_file", "SUPPORTED"]

logger = logging.getLogger(__name__)

SUPPORTED = ".nrrd, .nii, .nii.gz, .mha, .png, .jpg, .jpeg, or a .zip of one DICOM series"
_NRRD_NIFTI = (".nrrd", ".nii", ".nii.gz")
_IMAGES = (".mha", ".png", ".jpg", ".jpeg")
_ZIP_MAGIC = b"PK\x03\x04"


class UploadError(ValueError):
    """A file the page refuses; the message is meant for the user."""


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on what one upload may hold.

    Attributes:
        max_bytes: largest upload file (bytes).
        max_voxels: most voxels of a volume.
        memory_budget_bytes: memory the decoded volume may take.
        max_zip_members: most files in a zipped DICOM series.
    """

    max_bytes: int = 2 * 1024**3
    max_voxels: int = 512 * 512 * 2048
    memory_budget_bytes: int = 8 * 1024**3
    max_zip_members: int = 5000

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_voxels", "memory_budget_bytes", "max_zip_members"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class CheckedVolume:
    """An accepted volume: the files Slicer reads (one file, or a DICOM series), its display
    name, and the folder of its DICOM series (None for other formats; a DICOM SEG references it)."""

    files: list[Path]
    name: str
    dicom_folder: Path | None = None


def _suffix(name: str) -> str:
    lower = name.lower()
    return ".nii.gz" if lower.endswith(".nii.gz") else Path(lower).suffix


def _unzip_series(archive: Path, folder: Path, limits: UploadLimits) -> list[Path]:
    """The files of a zipped DICOM series, unpacked under `folder` (bounded, no path leaves it)."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = [m for m in zipped.infolist() if not m.is_dir()]
            if not members:
                raise UploadError(f"the zip file holds no files; zip the DICOM series' files ({SUPPORTED})")
            if len(members) > limits.max_zip_members:
                raise UploadError(f"the zip file holds {len(members)} files; the limit is {limits.max_zip_members}")
            total = sum(m.file_size for m in members)
            if total > limits.max_bytes:
                raise UploadError(f"the zip file unpacks to {total} bytes; the limit is {limits.max_bytes}")
            files = []
            for index, member in enumerate(members):
                target = folder / f"{index:05d}.dcm"  # our own names: no member path is ever used
                with zipped.open(member) as source, open(target, "wb") as out:
                    out.write(source.read(limits.max_bytes))
                files.append(target)
            return files
    except zipfile.BadZipFile as error:
        raise UploadError(f"the zip file is damaged ({error}); zip the DICOM series again") from None


def _engine_check(path: Path, budget: int, name: str):
    """The image as the engine reads it (scalar, ITK's LPS frame); refusals as UploadError."""
    try:
        return read_image(path, budget)[0]
    except (InputError, OSError) as error:
        raise UploadError(public_message(str(error), path).replace("the uploaded volume", name)) from None


def check_upload(path: Path, name: str, limits: UploadLimits, work_dir: Path) -> CheckedVolume:
    """Check an uploaded file and name the files Slicer should read.

    Args:
        path: the uploaded bytes, saved by the page under `work_dir`.
        name: the file name the browser sent (used for messages, the volume's name and the
            kind of a MetaImage/PNG/JPEG/zip file; NRRD and NIfTI are recognised by content).
        limits: the bounds.
        work_dir: a folder of this upload only (a zip is unpacked there).

    Raises:
        UploadError: an empty, too large, unknown, damaged, truncated or oversized volume.
    """
    size = path.stat().st_size
    if size == 0:
        raise UploadError(f"{name} is empty: choose a volume file ({SUPPORTED})")
    if size > limits.max_bytes:
        raise UploadError(f"{name} has {size} bytes; the limit is {limits.max_bytes} (start `tevia web` with a "
                          "larger --max-upload-mb to accept it)")
    stem = Path(name).name.removesuffix(_suffix(name)) or "volume"
    with open(path, "rb") as file:
        head = file.read(4)
    if head == _ZIP_MAGIC or _suffix(name) == ".zip":
        series = work_dir / "series"
        series.mkdir()
        files = _unzip_series(path, series, limits)
        _engine_check(series, limits.memory_budget_bytes, name)
        return CheckedVolume(files, stem, series)
    suffix = _suffix(name)
    if suffix in _IMAGES:
        target = path.rename(path.with_name("volume" + suffix))
        image = _engine_check(target, limits.memory_budget_bytes, name)
        if suffix != ".mha":  # a 2D picture: Slicer gets the engine's scalar image (an X-ray as one slice)
            target = target.with_suffix(".nrrd")
            sitk.WriteImage(image, str(target))
        return CheckedVolume([target], stem)
    try:
        volume = inspect_upload(path, limits.max_voxels, limits.memory_budget_bytes)
        check_complete(volume.path, name)
    except (VolumeError, InputError) as error:
        message = str(error).replace("the `volume` field", name)
        raise UploadError(f"{name}: {message}" if not message.startswith(name) else message) from None
    if suffix and suffix not in _NRRD_NIFTI:
        logger.info("%s was read as %s by its content", name, volume.path.suffix)
    return CheckedVolume([volume.path], stem)


def data_folder_files(folder: Path | None) -> list[str]:
    """The volume files of the server's data folder (paths relative to it), sorted."""
    if folder is None:
        return []
    known = (*_NRRD_NIFTI, *_IMAGES, ".zip")
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and _suffix(p.name) in known)


def resolve_data_file(folder: Path | None, relative: str) -> Path:
    """A file of the data folder by its relative path; nothing outside the folder is ever named.

    Raises:
        UploadError: no data folder, or a path that leaves it or names no file.
    """
    if folder is None:
        raise UploadError("this server was started without --data: upload a file instead")
    root = folder.resolve()
    target = (root / relative).resolve()
    if root not in target.parents or not target.is_file():
        raise UploadError(f"{relative!r} is not a file of the server's data folder; choose one from the list")
    return target
