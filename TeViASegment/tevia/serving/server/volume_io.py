"""Uploaded volumes: format from the first bytes, header and memory budget before any voxel, then the voxels.

A request's volume is inspected (`inspect_upload`: format, header, voxel count, memory
estimate) before it joins the queue, and decoded (`read_uploaded_volume`) only when its turn
on the model comes, so that at most one decoded volume is in memory at a time and a request
answered 503 never holds one.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from tevia.serving.server.tempfiles import RequestFolder
from tevia.volume.errors import VolumeTooLargeError
from tevia.volume.io import available_memory_bytes, check_memory, component_bytes, read_image

__all__ = ["VolumeError", "VolumeTooLargeError", "UploadedVolume", "inspect_upload", "read_uploaded_volume",
           "encode_labelmap", "public_message"]

_NRRD_MAGIC = b"NRRD000"
_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI_MAGICS = {(348, 344): (b"n+1\x00", b"ni1\x00"), (540, 4): (b"n+2\x00", b"ni2\x00")}
_MAX_NRRD_HEADER = 64 * 1024
# Copies of the voxels each ITK reader holds at its peak (measured: NIfTI reads into its own
# buffer, then copies into the image; NRRD decodes into the image's buffer).
_READER_COPIES = {"NiftiImageIO": 2, "NrrdImageIO": 1}
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[/\\](?:[^\s'\"/\\:;,()]+[/\\])+[^\s'\"/\\:;,()]*")


class VolumeError(ValueError):
    """An uploaded file that is not a readable, self-contained NRRD or NIfTI volume."""


@dataclass(frozen=True)
class UploadedVolume:
    """An upload whose header was read and accepted.

    Attributes:
        path: the file, renamed to the suffix its content shows (.nrrd, .nii, .nii.gz).
        size: voxels per dimension, as the header declares.
    """

    path: Path
    size: tuple[int, ...]


def public_message(text: str, upload: Path | None = None) -> str:
    """`text` without server paths: the upload (its path or its file name, which the server chose)
    becomes "the uploaded volume", other absolute paths "<path>"."""
    if upload is not None:
        for form in (str(upload.resolve()), str(upload), upload.name):
            text = text.replace(form, "the uploaded volume")
    return _ABSOLUTE_PATH.sub("<path>", text)


def _is_nifti(head: bytes) -> bool:
    for (size, offset), magics in _NIFTI_MAGICS.items():
        for order in ("little", "big"):
            if len(head) >= offset + 4 and int.from_bytes(head[:4], order) == size \
                    and head[offset:offset + 4] in magics:
                return True
    return False


def _check_nrrd_header(path: Path) -> None:
    """Refuse NRRD headers that point at other files (detached data: `data file:`)."""
    with open(path, "rb") as file:
        header = file.read(_MAX_NRRD_HEADER)
    end = header.find(b"\n\n")
    if end < 0:
        end = header.find(b"\r\n\r\n")
    if end < 0:
        raise VolumeError("the NRRD header has no end (blank line) in its first 64 KB")
    for line in header[:end].splitlines():
        key = line.split(b":", 1)[0].strip().lower()
        if key in (b"data file", b"datafile"):
            raise VolumeError("the NRRD header names a separate data file; send one self-contained "
                              ".nrrd (attached data), not a .nhdr with detached data")


def _format_of(path: Path) -> tuple[str, str]:
    """(suffix, ITK ImageIO name) from the file's first bytes, never from the client's name."""
    with open(path, "rb") as file:
        head = file.read(1024)
    if head.startswith(_NRRD_MAGIC):
        _check_nrrd_header(path)
        return ".nrrd", "NrrdImageIO"
    if head.startswith(_GZIP_MAGIC):
        try:
            with gzip.open(path, "rb") as file:
                inner = file.read(1024)
        except (OSError, EOFError) as error:
            raise VolumeError(f"the volume is a damaged gzip file ({error})") from None
        if _is_nifti(inner):
            return ".nii.gz", "NiftiImageIO"
        raise VolumeError("the volume is gzip-compressed but not a NIfTI (.nii.gz) file")
    if _is_nifti(head):
        return ".nii", "NiftiImageIO"
    raise VolumeError("the `volume` field is not a NRRD (.nrrd) or NIfTI (.nii, .nii.gz) file")


def inspect_upload(upload: Path, max_voxels: int, budget_bytes: int) -> UploadedVolume:
    """Check an uploaded file's format and header against the limits; no voxel is decoded.

    The file is renamed (same folder) to the suffix its content shows.

    Args:
        upload: the file as the server saved it.
        max_voxels: most voxels accepted (every dimension counted).
        budget_bytes: memory the request's volume may take (see `ServerSettings.memory_budget_bytes`).

    Raises:
        VolumeError: not NRRD/NIfTI, a NRRD with detached data, too many voxels, an unreadable header.
        VolumeTooLargeError: components x voxels x bytes per component x the reader's copies, plus
            the labelmap and work arrays, exceed the budget or the memory available now.
    """
    suffix, image_io = _format_of(upload)
    path = upload.rename(upload.with_name("volume" + suffix))
    reader = sitk.ImageFileReader()
    reader.SetImageIO(image_io)
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        last_line = str(error).strip().splitlines()[-1][:300] if str(error).strip() else "unknown error"
        raise VolumeError(public_message(f"the header of the volume could not be read as {suffix}: {last_line}",
                                         path)) from None
    size = tuple(reader.GetSize())
    voxels = 1
    for n in size:
        voxels *= n
    if voxels > max_voxels:
        raise VolumeError(f"the volume has {voxels} voxels {size}; this server accepts at most {max_voxels}")
    components = reader.GetNumberOfComponents()
    per_component = component_bytes(reader.GetPixelID())
    # The reader's copies of every component, plus the first component alone for a vector volume.
    per_voxel = _READER_COPIES[image_io] * components * per_component + (per_component if components > 1 else 0)
    budget = min(budget_bytes, available_memory_bytes())
    try:
        check_memory(size, per_voxel, budget)
    except VolumeTooLargeError as error:
        raise VolumeTooLargeError(
            f"{error} ({components} component(s) of {per_component} byte(s) per voxel, "
            f"{_READER_COPIES[image_io]} cop{'y' if _READER_COPIES[image_io] == 1 else 'ies'} while reading {suffix}; "
            f"this server allows {budget_bytes / 1024**3:.1f} GiB per request)") from None
    return UploadedVolume(path, size)


def read_uploaded_volume(volume: UploadedVolume, folder: RequestFolder) -> tuple[sitk.Image, list[str]]:
    """Decode an inspected upload (tevia.volume.io.read_image: the checks of the worker and the CLI),
    then delete the file.

    Returns:
        (scalar image in ITK's LPS frame, warnings of the reader).

    Raises:
        ValueError: the voxels cannot be read (corrupt, truncated, 4D); the message names no server path.
        VolumeTooLargeError: the volume no longer fits the memory available now.
        RuntimeError: the request folder was replaced.
    """
    try:
        return read_image(folder.file(volume.path.name))
    except ValueError as error:
        raise type(error)(public_message(str(error), volume.path)) from None
    finally:
        folder.remove_file(volume.path.name)


def encode_labelmap(labelmap: sitk.Image, folder: RequestFolder) -> bytes:
    """A uint8 labelmap as gzip-compressed NIfTI bytes (written through a file in `folder`, then deleted)."""
    path = folder.file("labelmap.nii.gz")
    try:
        sitk.WriteImage(labelmap, str(path), useCompression=True)
        return path.read_bytes()
    finally:
        folder.remove_file(path.name)
