"""Writing labelmaps: every format keeps the input geometry; .seg.nrrd reads back in slicerio and slicer-core."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from tevia.volume.errors import BadInputError, UnsupportedFormatError
from tevia.volume.geometry import ijk_to_lps, ijk_to_ras, same_geometry
from tevia.volume.writers import SEGMENT_COLORS, check_output_path, sidecar_path, write_labelmap
from volume_fixtures import ct_path  # noqa: F401 (pytest fixtures)

LABELS = {1: "bone", 2: "lung air"}


@pytest.fixture
def labelmap(ct_path):
    """A real labelmap of the committed CT: 1 = bone (> 300 HU), 2 = air in the body (< -500 HU)."""
    ct = sitk.ReadImage(str(ct_path))
    hu = sitk.GetArrayFromImage(ct)
    labels = np.where(hu > 300, 1, np.where(hu < -500, 2, 0)).astype(np.uint8)
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(ct)
    return image


@pytest.mark.parametrize("extension", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_image_formats_keep_geometry_and_sidecar(tmp_path, labelmap, extension):
    out = tmp_path / f"mask{extension}"
    written = write_labelmap(labelmap, out, LABELS, {"warnings": ["w"]})
    assert written == [out, tmp_path / "mask.tevia.json"]
    back = sitk.ReadImage(str(out))
    assert same_geometry(back, labelmap) and back.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(labelmap))
    sidecar = json.loads((tmp_path / "mask.tevia.json").read_text())
    assert sidecar["labels"] == {"1": "bone", "2": "lung air"} and sidecar["warnings"] == ["w"]
    assert sidecar["tevia_sidecar"] == 1 and sidecar["output"] == out.name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, "mask.tevia.json"])


def test_npy_is_kji(tmp_path, labelmap):
    write_labelmap(labelmap, tmp_path / "mask.npy", LABELS, {})
    np.testing.assert_array_equal(np.load(tmp_path / "mask.npy"), sitk.GetArrayFromImage(labelmap))


def test_png_for_2d_and_refused_for_3d(tmp_path, labelmap):
    plane = labelmap[:, :, 15]
    write_labelmap(plane, tmp_path / "plane.png", LABELS, {})
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "plane.png"))),
                                  sitk.GetArrayFromImage(plane))
    with pytest.raises(UnsupportedFormatError, match="PNG holds one 2D slice"):
        write_labelmap(labelmap, tmp_path / "volume.png", LABELS, {})


def test_seg_nrrd_reads_back_with_slicerio(tmp_path, labelmap):
    import slicerio

    write_labelmap(labelmap, tmp_path / "mask.seg.nrrd", LABELS, {})
    segmentation = slicerio.read_segmentation(str(tmp_path / "mask.seg.nrrd"))
    np.testing.assert_allclose(segmentation["ijkToLPS"], ijk_to_lps(labelmap), atol=1e-5)
    assert [s["name"] for s in segmentation["segments"]] == ["bone", "lung air"]
    np.testing.assert_allclose(segmentation["segments"][1]["color"], SEGMENT_COLORS[1], atol=1e-4)
    voxels = segmentation["voxels"]
    np.testing.assert_array_equal(voxels.transpose(2, 1, 0), sitk.GetArrayFromImage(labelmap))
    for name in LABELS.values():
        mask = slicerio.extract_segments(segmentation, [(name, 1)])["voxels"]
        value = next(k for k, v in LABELS.items() if v == name)
        assert np.count_nonzero(mask) == np.count_nonzero(sitk.GetArrayViewFromImage(labelmap) == value) > 0


def test_seg_nrrd_reads_back_with_slicer_core(tmp_path, labelmap):
    import slicer
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    write_labelmap(labelmap, tmp_path / "mask.seg.nrrd", LABELS, {})
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp_path / "mask.seg.nrrd"))
    assert storage.ReadData(node) == 1
    segmentation = node.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["bone", "lung air"]
    expected = sitk.GetArrayViewFromImage(labelmap)
    for index in range(2):
        segment = segmentation.GetNthSegment(index)
        np.testing.assert_allclose(segment.GetColor(), SEGMENT_COLORS[index], atol=1e-4)
        oriented = segment.GetRepresentation("Binary labelmap")
        matrix = vtk.vtkMatrix4x4()
        oriented.GetImageToWorldMatrix(matrix)
        image_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        extent = oriented.GetExtent()
        assert extent[::2] == (0, 0, 0)
        np.testing.assert_allclose(image_to_ras, ijk_to_ras(labelmap), atol=1e-4)
        dims = [extent[1] + 1, extent[3] + 1, extent[5] + 1]
        voxels = vtk_to_numpy(oriented.GetPointData().GetScalars()).reshape(dims[::-1])
        assert dims == list(labelmap.GetSize())
        np.testing.assert_array_equal(voxels == segment.GetLabelValue(), expected == index + 1)


def test_failed_write_leaves_nothing(tmp_path, labelmap):
    """A writer failure (float PNG is not writable) leaves no file and no temporary file behind."""
    plane = sitk.Cast(labelmap[:, :, 15], sitk.sitkFloat64)
    with pytest.raises(RuntimeError):
        write_labelmap(plane, tmp_path / "plane.png", LABELS, {})
    assert list(tmp_path.iterdir()) == []


def test_check_output_path(tmp_path, ct_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "m.nii.gz")
    with pytest.raises(UnsupportedFormatError, match="cannot write"):
        check_output_path(tmp_path / "m.txt")
    with pytest.raises(BadInputError, match="is the input"):
        check_output_path(ct_path, inputs=(ct_path,))
    assert sidecar_path(tmp_path / "a.seg.nrrd") == tmp_path / "a.tevia.json"
    assert sidecar_path(tmp_path / "a.nii.gz") == tmp_path / "a.tevia.json"


def test_a_bids_sidecar_next_to_the_output_is_kept(tmp_path, labelmap):
    bids = tmp_path / "sub-01_T1w.json"
    bids.write_text('{"RepetitionTime": 2.3}')
    written = write_labelmap(labelmap, tmp_path / "sub-01_T1w.nii.gz", LABELS, {})
    assert written[1] == tmp_path / "sub-01_T1w.tevia.json"
    assert bids.read_text() == '{"RepetitionTime": 2.3}'


@pytest.mark.parametrize("content", ['{"RepetitionTime": 2.3}', "notes, not JSON", "[1, 2]"])
def test_a_sidecar_path_that_tevia_did_not_write_is_refused(tmp_path, labelmap, content):
    foreign = tmp_path / "mask.tevia.json"
    foreign.write_text(content)
    with pytest.raises(BadInputError, match="TeViA did not write it.*move that file or choose another output"):
        write_labelmap(labelmap, tmp_path / "mask.nii.gz", LABELS, {})
    assert foreign.read_text() == content and sorted(tmp_path.iterdir()) == [foreign]


def test_a_second_run_replaces_its_own_output_and_sidecar(tmp_path, labelmap):
    out = tmp_path / "mask.nrrd"
    write_labelmap(labelmap, out, LABELS, {"run": 1})
    write_labelmap(labelmap, out, LABELS, {"run": 2})
    assert json.loads((tmp_path / "mask.tevia.json").read_text())["run"] == 2


def test_the_sidecar_may_not_be_an_input(tmp_path, labelmap):
    geometry = tmp_path / "v.tevia.json"
    geometry.write_text('{"ijk_to_ras": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}')
    with pytest.raises(BadInputError, match="sidecar .*v.tevia.json is the input file"):
        check_output_path(tmp_path / "v.nii.gz", labelmap, inputs=(tmp_path / "v.npy", geometry))


def test_a_failed_write_keeps_the_previous_output_and_sidecar(tmp_path, labelmap):
    plane = labelmap[:, :, 15]
    write_labelmap(plane, tmp_path / "plane.png", LABELS, {})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(RuntimeError):
        write_labelmap(sitk.Cast(plane, sitk.sitkFloat64), tmp_path / "plane.png", {1: "other"}, {})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
