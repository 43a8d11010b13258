"""Reading uploaded volumes safely and writing the answer's labelmap (SimpleITK, LPS frame)."""

from __future__ import annotations

import gzip
from pathlib import Path

import SimpleITK as sitk

from tevia.volume.completeness import check_complete
from tevia.volume.errors import BadInputError, VolumeTooLargeError
from tevia.volume.io import check_memory

__all__ = ["VolumeError", "VolumeTooLargeError", "read_uploaded_volume", "write_labelmap"]

_NRRD_MAGIC = b"NRRD000"
_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI_MAGICS = {(348, 344): (b"n+1\x00", b"ni1\x00"), (540, 4): (b"n+2\x00", b"ni2\x00")}
_MAX_NRRD_HEADER = 64 * 1024


class VolumeError(ValueError):
    """An uploaded file that is not a readable, self-contained NRRD or NIfTI volume."""


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


def read_uploaded_volume(upload: Path, max_voxels: int) -> sitk.Image:
    """Read an uploaded NRRD or NIfTI file (LPS physical frame, as ITK reads it).

    The file is renamed (same folder) to the suffix its content shows, its header is read
    first to check the voxel count, then its voxels.

    Args:
        upload: the file as the server saved it.
        max_voxels: most voxels accepted.

    Raises:
        VolumeError: not NRRD/NIfTI, a NRRD with detached data, too many voxels, data shorter
            than the header declares, or unreadable.
        VolumeTooLargeError: the volume would not fit the server's free memory
            (tevia.volume.io.check_memory, as in the worker).
    """
    suffix, image_io = _format_of(upload)
    path = upload.rename(upload.with_name("volume" + suffix))
    reader = sitk.ImageFileReader()
    reader.SetImageIO(image_io)
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        size = reader.GetSize()
        voxels = 1
        for n in size:
            voxels *= n
        if voxels > max_voxels:
            raise VolumeError(f"the volume has {voxels} voxels {tuple(size)}; this server accepts at most "
                              f"{max_voxels}")
        if reader.GetDimension() not in (2, 3):
            raise VolumeError(f"the volume has {reader.GetDimension()} dimensions; send a 2D or 3D image")
        check_memory(size, 4 * reader.GetNumberOfComponents())
        check_complete(path, name="the uploaded volume")
        return reader.Execute()
    except BadInputError as error:  # truncated (ITK would fill the missing voxels with zeros) or corrupt
        raise VolumeError(str(error)) from None
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1][:300] if str(error).strip() else "unknown error"
        raise VolumeError(f"the volume could not be read as {suffix}: {first_line}") from None


def write_labelmap(labelmap: sitk.Image, path: Path) -> None:
    """Write a uint8 labelmap as compressed NIfTI (`path` should end in .nii.gz)."""
    sitk.WriteImage(labelmap, str(path), useCompression=True)
