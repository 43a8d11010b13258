"""Reading inputs: every format, DICOM series, raw .npy + geometry, and each bad input's error."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from tevia.volume.errors import BadInputError, UnsupportedFormatError, VolumeTooLargeError
from tevia.volume.geometry import ijk_to_ras, same_geometry
from tevia.volume.io import check_memory, file_extension, read_image, read_input, read_raw_volume
from volume_fixtures import committed_input, shared_input, ct_path, volumes_dir  # noqa: F401 (pytest fixtures)


def test_reads_committed_inputs(committed_input):
    image, warnings = read_image(committed_input)
    assert image.GetNumberOfComponentsPerPixel() == 1
    assert image.GetDimension() == (2 if committed_input.suffix in (".png", ".jpg") else 3)
    assert min(image.GetSize()) >= 12 and warnings == []


def test_reads_shared_volumes(shared_input):
    image, _ = read_image(shared_input)
    assert image.GetDimension() == 3 and image.GetNumberOfComponentsPerPixel() == 1


def test_dicom_series_geometry(volumes_dir):
    image, _ = read_image(volumes_dir / "ct-head-dicom-12")
    assert image.GetSize() == (64, 64, 12)
    np.testing.assert_allclose(image.GetSpacing(), (3.2, 3.2, 1.5), atol=1e-4)


def test_file_extension_double():
    assert file_extension("a/b.seg.nrrd") == ".seg.nrrd"
    assert file_extension("B.NII.GZ") == ".nii.gz"
    assert file_extension("c.nrrd") == ".nrrd"


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="input not found"):
        read_image(tmp_path / "nothing.nii.gz")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(UnsupportedFormatError, match="not supported"):
        read_image(path)


def test_folder_without_dicom(tmp_path):
    with pytest.raises(UnsupportedFormatError, match="no DICOM series"):
        read_image(tmp_path)


@pytest.mark.parametrize("name", ["broken.nrrd", "broken.mha", "broken.png"])
def test_corrupt_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"garbage, not an image" * 10)
    with pytest.raises(BadInputError, match="corrupt"):
        read_image(path)


def test_four_d_volume_is_refused(tmp_path, ct_path):
    ct = sitk.ReadImage(str(ct_path))
    path = tmp_path / "four_d.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([ct, ct]), str(path))
    with pytest.raises(BadInputError, match="4D"):
        read_image(path)


def test_multi_component_keeps_first_with_warning(tmp_path, ct_path):
    ct = sitk.ReadImage(str(ct_path))
    path = tmp_path / "vector.nrrd"
    sitk.WriteImage(sitk.Compose(ct, ct * 0), str(path))
    image, warnings = read_image(path)
    assert image.GetNumberOfComponentsPerPixel() == 1
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(ct))
    assert "first" in warnings[0]


def test_rgb_png_becomes_gray(tmp_path, volumes_dir):
    gray = sitk.ReadImage(str(volumes_dir / "totalseg-ct-slice15.png"))
    path = tmp_path / "rgb.png"
    sitk.WriteImage(sitk.Compose(gray, gray, gray), str(path))
    image, warnings = read_image(path)
    assert image.GetNumberOfComponentsPerPixel() == 1 and "grayscale" in warnings[0]
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(gray))


def _write_raw(tmp_path, image, matrix=None, shape=None):
    array = sitk.GetArrayFromImage(image)
    np.save(tmp_path / "voxels.npy", array)
    geometry = {"shape_kji": list(shape or array.shape),
                "ijk_to_ras": (ijk_to_ras(image) if matrix is None else matrix).tolist()}
    (tmp_path / "geometry.json").write_text(json.dumps(geometry))
    return {"npy": str(tmp_path / "voxels.npy"), "geometry": str(tmp_path / "geometry.json")}


@pytest.mark.parametrize("name", ["totalseg-ct.nii.gz", "spinalcord-t2.nii.gz"])
def test_raw_voxels_with_ras_geometry(tmp_path, volumes_dir, name):
    """Slicer sends numpy KJI voxels + IJK-to-RAS: the image must land on the file's LPS geometry."""
    original = sitk.ReadImage(str(volumes_dir / name))
    image, warnings = read_input(_write_raw(tmp_path, original))
    assert same_geometry(image, original) and warnings == []
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(original))


def test_raw_shape_mismatch(tmp_path, ct_path):
    spec = _write_raw(tmp_path, sitk.ReadImage(str(ct_path)), shape=[1, 2, 3])
    with pytest.raises(BadInputError, match="shape"):
        read_input(spec)


def test_raw_bad_matrix(tmp_path, ct_path):
    spec = _write_raw(tmp_path, sitk.ReadImage(str(ct_path)), matrix=np.zeros((4, 4)))
    with pytest.raises(BadInputError, match="geometry"):
        read_input(spec)


def test_raw_missing_and_bad_keys(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_raw_volume(tmp_path / "a.npy", tmp_path / "a.json")
    with pytest.raises(BadInputError, match="npy"):
        read_input({"voxels": "a.npy"})


def test_too_large_is_refused_before_reading(tmp_path):
    """A header announcing 10^12 voxels is refused from its header alone (no allocation)."""
    (tmp_path / "huge.raw").write_bytes(b"\0" * 16)
    (tmp_path / "huge.nhdr").write_text(
        "NRRD0004\ntype: short\ndimension: 3\nsizes: 10000 10000 10000\nencoding: raw\n"
        "endian: little\nspace: left-posterior-superior\nspace directions: (1,0,0) (0,1,0) (0,0,1)\n"
        "space origin: (0,0,0)\ndata file: huge.raw\n")
    with pytest.raises(VolumeTooLargeError, match="crop or downsample"):
        read_image(tmp_path / "huge.nhdr")


def test_check_memory_budget():
    check_memory((512, 512, 300), 2, budget_bytes=1024**3)
    with pytest.raises(VolumeTooLargeError, match="512x512x300"):
        check_memory((512, 512, 300), 2, budget_bytes=100 * 1024**2)
