"""DICOM SEG output (`--format dicom-seg`): real DICOM series in, a SEG that pydicom and highdicom read
back with the prompts' names and codes, the source series referenced, the geometry and the labels kept."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import TESTDATA, shared_path
from tevia.commands.cli import main as tevia
from worker_process import worker  # noqa: F401 (a pytest fixture: the worker with the tiny model)

highdicom = pytest.importorskip("highdicom", reason="tevia[dicom] is part of the dev extra")
import pydicom  # noqa: E402


def _round_trip(series, prompts: list[str], tmp_path) -> tuple[pydicom.Dataset, np.ndarray, list[pydicom.Dataset]]:
    """Segment `series` to a .nii.gz and a .dcm; returns (the SEG, the .nii.gz labels K J I, the sources)."""
    common = ["predict", "--model", "default", "--input", str(series), "--device", "cpu"]
    for prompt in prompts:
        common += ["--text", prompt]
    assert tevia([*common, "--out", str(tmp_path / "labels.nii.gz")]) == 0
    assert tevia([*common, "--out", str(tmp_path / "labels.dcm")]) == 0
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(series))
    return (pydicom.dcmread(tmp_path / "labels.dcm"), sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels.nii.gz"))),
            [pydicom.dcmread(name) for name in files])


def _labels_of(seg, sources: list[pydicom.Dataset]) -> np.ndarray:
    """The SEG's segments as one label array, frame k on source image k (highdicom's reader)."""
    seg = highdicom.seg.Segmentation.from_dataset(seg)
    return seg.get_pixels_by_source_instance(source_sop_instance_uids=[_uid(s) for s in sources],
                                             combine_segments=True, skip_overlap_checks=True).astype(np.uint8)


def _uid(source: pydicom.Dataset) -> str:
    """A source image's SOP Instance UID (this export leaves it empty in the dataset, set in the file meta)."""
    return source.SOPInstanceUID or source.file_meta.MediaStorageSOPInstanceUID


def _codes(item) -> tuple[str, str]:
    return item.CodeValue, item.CodingSchemeDesignator


def test_a_real_ct_series_round_trips_through_dicom_seg(tmp_path):
    series = shared_path("volumes", "totalseg-example-ct-dicom", "series")
    prompts = ["liver", "left kidney", "bilateral pulmonary infection"]
    seg, labels, sources = _round_trip(series, prompts, tmp_path)
    assert seg.Modality == "SEG" and seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == prompts
    liver, kidney, infection = seg.SegmentSequence
    assert _codes(liver.SegmentedPropertyCategoryCodeSequence[0]) == ("123037004", "SCT")  # Anatomical Structure
    assert _codes(liver.SegmentedPropertyTypeCodeSequence[0]) == ("10200004", "SCT")
    assert _codes(kidney.SegmentedPropertyTypeCodeSequence[0]) == ("64033007", "SCT")
    assert _codes(kidney.SegmentedPropertyTypeModifierCodeSequence[0]) == ("7771000", "SCT")  # Left
    assert _codes(infection.SegmentedPropertyCategoryCodeSequence[0]) == ("49755003", "SCT")
    assert _codes(infection.SegmentedPropertyTypeCodeSequence[0]) == ("47351003", "SCT")  # Infiltrate
    assert _codes(infection.AnatomicRegionSequence[0]) == ("39607008", "SCT")  # Lung
    assert _codes(infection.AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0]) == ("51440002", "SCT")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == \
        {_uid(s) for s in sources} and len(sources) == 20
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    # geometry: each frame lies where its source image lies
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert np.allclose(shared.PixelMeasuresSequence[0].PixelSpacing, sources[0].PixelSpacing)
    assert np.allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient, sources[0].ImageOrientationPatient)
    positions = {tuple(np.round(f.PlanePositionSequence[0].ImagePositionPatient, 3))  # a frame per segment and slice
                 for f in seg.PerFrameFunctionalGroupsSequence}
    assert positions == {tuple(np.round(s.ImagePositionPatient, 3)) for s in sources}
    assert labels.any()
    assert np.array_equal(_labels_of(seg, sources), labels)


def test_a_series_without_frame_of_reference_is_refused_before_the_model_runs(tmp_path, capsys):
    code = tevia(["predict", "--model", "default", "--input", str(TESTDATA / "volumes" / "ct-head-dicom-12"),
                  "--text", "brain", "--out", str(tmp_path / "labels.dcm"), "--device", "cpu"])
    assert code == 1
    err = capsys.readouterr().err
    assert "no Frame of Reference UID" in err and "WARNING" not in err  # refused before any segmentation
    assert list(tmp_path.iterdir()) == []


def test_dicom_seg_of_an_input_that_is_not_dicom_is_refused_before_the_model_runs(tmp_path, capsys):
    code = tevia(["predict", "--model", "default", "--input", str(TESTDATA / "volumes" / "totalseg-ct.nii.gz"),
                  "--text", "liver", "--out", str(tmp_path / "labels.dcm"), "--device", "cpu"])
    assert code == 1
    assert "is not DICOM" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_worker_writes_a_dicom_seg_for_a_dicom_folder_input(worker, tmp_path):
    series = shared_path("volumes", "totalseg-example-ct-dicom", "series")
    request = {"type": "segment", "input": str(series), "prompts": ["liver", "right lung"]}
    as_nifti = worker.request({**request, "id": "nii", "output": str(tmp_path / "labels.nii.gz")})[-1]
    as_seg = worker.request({**request, "id": "seg", "output": str(tmp_path / "labels.dcm")})[-1]
    assert as_nifti["event"] == as_seg["event"] == "result", as_seg
    seg = pydicom.dcmread(as_seg["output"])
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "right lung"]
    sources = [pydicom.dcmread(name) for name in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series))]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(as_nifti["output"]))
    assert np.array_equal(_labels_of(seg, sources), labels)
