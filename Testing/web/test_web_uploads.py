"""The page's upload checks (tevia_web.uploads) on real files: what is refused, with which message,
and that nothing outside the data folder is ever named."""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "web"))

from tevia_web.uploads import (UploadError, UploadLimits, check_upload, data_folder_files,  # noqa: E402
                               resolve_data_file)

VOLUMES = REPO / "Testing" / "data" / "volumes"
SERIES = VOLUMES / "ct-head-dicom-12"


def _upload(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    return path


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)
    return buffer.getvalue()


def test_a_nifti_is_accepted_by_its_content_whatever_its_name(tmp_path):
    checked = check_upload(_upload(tmp_path, (VOLUMES / "totalseg-ct.nii.gz").read_bytes()), "scan.bin",
                           UploadLimits(), tmp_path)
    assert [p.name for p in checked.files] == ["volume.nii.gz"] and checked.dicom_folder is None


def test_too_many_voxels_and_too_large_files_are_refused_before_reading(tmp_path):
    data = (VOLUMES / "totalseg-ct.nii.gz").read_bytes()
    with pytest.raises(UploadError, match="this server accepts at most 1000"):
        check_upload(_upload(tmp_path, data), "ct.nii.gz", UploadLimits(max_voxels=1000), tmp_path)
    with pytest.raises(UploadError, match=f"has {len(data)} bytes; the limit is 1000"):
        check_upload(_upload(tmp_path, data), "ct.nii.gz", UploadLimits(max_bytes=1000), tmp_path)


def test_a_zipped_dicom_series_is_unpacked_under_our_own_names(tmp_path):
    members = {f"../../escape/{p.name}": p.read_bytes() for p in sorted(SERIES.glob("*.dcm"))}
    checked = check_upload(_upload(tmp_path, _zip(members)), "head.zip", UploadLimits(), tmp_path)
    assert len(checked.files) == 12 and checked.dicom_folder == tmp_path / "series"
    assert all(p.parent == tmp_path / "series" for p in checked.files)
    assert not (tmp_path.parent / "escape").exists()


def test_bad_zips_are_refused_with_what_to_do(tmp_path):
    with pytest.raises(UploadError, match="holds 3 files; the limit is 2"):
        check_upload(_upload(tmp_path, _zip({"a": b"1", "b": b"2", "c": b"3"})), "x.zip",
                     UploadLimits(max_zip_members=2), tmp_path)
    (tmp_path / "series").rmdir()
    with pytest.raises(UploadError, match="damaged"):
        check_upload(_upload(tmp_path, b"PK\x03\x04" + b"\0" * 100), "x.zip", UploadLimits(), tmp_path)
    (tmp_path / "series").rmdir()
    with pytest.raises(UploadError, match="DICOM"):
        check_upload(_upload(tmp_path, _zip({"notes.txt": b"not an image"})), "x.zip", UploadLimits(), tmp_path)


def test_a_png_xray_is_checked_by_the_engines_reader(tmp_path):
    png = VOLUMES / "totalseg-ct-slice15.png"
    checked = check_upload(_upload(tmp_path, png.read_bytes()), "slice.png", UploadLimits(), tmp_path)
    image = sitk.ReadImage(str(checked.files[0]))  # what Slicer reads: the engine's scalar image, as NRRD
    assert checked.files[0].suffix == ".nrrd" and image.GetNumberOfComponentsPerPixel() == 1
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).squeeze(),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(png))).squeeze())
    with pytest.raises(UploadError, match="slice.png"):
        check_upload(_upload(tmp_path, png.read_bytes()[:200]), "slice.png", UploadLimits(), tmp_path)


def test_the_data_folder_lists_volumes_and_never_names_a_file_outside_it(tmp_path):
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "sub" / "ct.nii.gz").write_bytes(b"x")
    (tmp_path / "data" / "notes.txt").write_text("x")
    (tmp_path / "secret.nrrd").write_text("x")
    folder = tmp_path / "data"
    assert data_folder_files(folder) == ["sub/ct.nii.gz"]
    assert resolve_data_file(folder, "sub/ct.nii.gz") == (folder / "sub" / "ct.nii.gz").resolve()
    for outside in ("../secret.nrrd", str(tmp_path / "secret.nrrd"), "sub/../../secret.nrrd", "sub"):
        with pytest.raises(UploadError, match="not a file of the server's data folder"):
            resolve_data_file(folder, outside)
    with pytest.raises(UploadError, match="without --data"):
        resolve_data_file(None, "sub/ct.nii.gz")
