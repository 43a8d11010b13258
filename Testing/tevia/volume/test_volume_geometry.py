"""Geometry: IJK<->RAS/LPS matrices, images from raw voxels, display-oriented slice layouts."""
import numpy as np
import pytest
import SimpleITK as sitk

from tevia.volume.geometry import (LPS_TO_RAS, as_3d, ijk_to_lps, ijk_to_ras, image_from_array, same_geometry,
                                   slice_layout)
from tevia.volume.io import read_image
from volume_fixtures import committed_input, shared_input, ct_path, volumes_dir  # noqa: F401 (pytest fixtures)


def _roundtrip(path):
    image = as_3d(read_image(path)[0])
    rebuilt = image_from_array(sitk.GetArrayFromImage(image), ijk_to_ras(image))
    assert same_geometry(image, rebuilt)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(rebuilt))
    return image


def test_raw_roundtrip_committed(committed_input):
    _roundtrip(committed_input)


def test_raw_roundtrip_shared(shared_input):
    _roundtrip(shared_input)


def test_ijk_to_ras_matches_itk_physical_points(ct_path):
    image = read_image(ct_path)[0]
    index = (7, 11, 3)
    lps = np.asarray(image.TransformIndexToPhysicalPoint(index))
    np.testing.assert_allclose((ijk_to_lps(image) @ [*index, 1])[:3], lps, atol=1e-6)
    np.testing.assert_allclose((ijk_to_ras(image) @ [*index, 1])[:3], lps * [-1, -1, 1], atol=1e-6)
    np.testing.assert_array_equal(LPS_TO_RAS @ LPS_TO_RAS, np.eye(4))


@pytest.mark.parametrize("matrix", [np.zeros((4, 4)), np.full((4, 4), np.nan), np.eye(3)])
def test_image_from_array_rejects_bad_matrices(matrix):
    with pytest.raises(ValueError, match="ijk_to_ras"):
        image_from_array(np.zeros((2, 2, 2)), matrix)


def _oblique(spacing=(0.5, 2.0, 3.0), degrees=30.0):
    """An IJK-to-RAS matrix with anisotropic spacing and axes rotated about k (columns: axes)."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    matrix = np.eye(4)
    matrix[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) * spacing
    matrix[:3, 3] = (10.0, -20.0, 30.0)
    return matrix


def test_an_oblique_anisotropic_matrix_survives_the_round_trip():
    """Spacing is the length of each axis (a column), not of a row: they differ once the axes
    are rotated and unequally spaced."""
    matrix = _oblique()
    image = image_from_array(np.zeros((2, 3, 4)), matrix)
    np.testing.assert_allclose(image.GetSpacing(), (0.5, 2.0, 3.0))
    np.testing.assert_allclose(ijk_to_ras(image), matrix, atol=1e-12)


def test_a_3x4_matrix_is_the_4x4_without_its_last_row():
    matrix = _oblique()
    assert same_geometry(image_from_array(np.zeros((2, 3, 4)), matrix[:3]),
                         image_from_array(np.zeros((2, 3, 4)), matrix))


def test_nearly_parallel_axes_are_refused_relative_to_their_length():
    """Axes 1 m long whose first two differ by 1e-10 mm: the box they span is 1e-4 mm^3, a
    millionth of a millionth of their lengths' product, so the matrix is refused."""
    matrix = np.diag([1000.0, 1000.0, 1000.0, 1.0])
    matrix[:3, 1] = (1000.0, 1e-10, 0.0)
    with pytest.raises(ValueError, match="dependent axis"):
        image_from_array(np.zeros((2, 2, 2)), matrix)


def test_a_voxel_array_that_is_not_3d_is_refused_by_name():
    with pytest.raises(ValueError, match=r"array_kji must be 3D \(K, J, I\), got shape \(2, 2\)"):
        image_from_array(np.zeros((2, 2)), np.eye(4))


def _physical(image, array_index_kji):
    k, j, i = (int(v) for v in array_index_kji)
    return np.asarray(image.TransformIndexToPhysicalPoint((i, j, k)))


# Expected LPS direction of (next column, next row, next slice) for each display: columns run to the
# patient's left (+x) in axial/coronal and to posterior (+y) in sagittal; rows run posterior (+y) in
# axial and inferior (-z) otherwise.
EXPECTED = {"axial": ([1, 0, 0], [0, 1, 0], 2), "coronal": ([1, 0, 0], [0, 0, -1], 1),
            "sagittal": ([0, 1, 0], [0, 0, -1], 0)}


@pytest.mark.parametrize("axis", list(EXPECTED))
@pytest.mark.parametrize("name", ["totalseg-ct.nii.gz", "spinalcord-t2.nii.gz", "ct-head-dicom-12"])
def test_slice_layout_follows_anatomy(axis, name, volumes_dir):
    """Whatever the voxel order on disk (RAS, LPS, PSR), the view shows the standard display."""
    image = read_image(volumes_dir / name)[0]
    layout = slice_layout(image, axis)
    index = np.arange(int(np.prod(image.GetSize()))).reshape(image.GetSize()[::-1])
    view = layout.view(index)
    unravel = lambda flat: np.unravel_index(flat, index.shape)  # noqa: E731
    origin = _physical(image, unravel(view[0, 0, 0]))
    column_step = _physical(image, unravel(view[0, 0, 1])) - origin
    row_step = _physical(image, unravel(view[0, 1, 0])) - origin
    slice_step = _physical(image, unravel(view[1, 0, 0])) - origin
    column, row, normal = EXPECTED[axis]
    assert np.dot(column_step / np.linalg.norm(column_step), column) > 0.99
    assert np.dot(row_step / np.linalg.norm(row_step), row) > 0.99
    assert abs(slice_step[normal]) / np.linalg.norm(slice_step) > 0.99
    ras = np.asarray(layout.column_direction_ras)
    np.testing.assert_allclose(ras, LPS_TO_RAS[:3, :3] @ (column_step / np.linalg.norm(column_step)), atol=1e-6)


def test_slice_layout_view_writes_through(ct_path):
    image = read_image(ct_path)[0]
    labels = np.zeros(image.GetSize()[::-1], dtype=np.uint8)
    view = slice_layout(image, "coronal").view(labels)
    view[3, 4, 5] = 7
    assert labels.sum() == 7


def test_two_d_image_is_its_own_slice(volumes_dir):
    image = as_3d(read_image(volumes_dir / "totalseg-ct-slice15.png")[0])
    for axis in EXPECTED:
        layout = slice_layout(image, axis)
        view = layout.view(sitk.GetArrayViewFromImage(image))
        assert view.shape == (1, image.GetSize()[1], image.GetSize()[0])
        assert layout.column_direction_ras == (-1.0, 0.0, 0.0)


def test_slice_layout_rejects_unknown_axis(ct_path):
    with pytest.raises(ValueError, match="slice_axis"):
        slice_layout(read_image(ct_path)[0], "oblique")
