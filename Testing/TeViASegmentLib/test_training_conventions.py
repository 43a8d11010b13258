"""The exported training set means what the annotator meant: side words in the model's
convention, checked against where the mask lies in each exported slice.

A real CT (TotalSegmentator example) in a real slicer-core scene, its left lower lung lobe
as the segment, once as stored and once with a direction matrix that mirrors the image (the
same voxels at the patient's other side). The patient side of the segment comes from RAS
geometry; the image half from the exported PNG masks.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import slicer.util
from conftest import shared_path
from slicer_fixtures import load_volume, slicer_scene  # noqa: F401 (fixture)

from TeViASegmentLib import scene, settings, training_export

LOWER_LOBE_LEFT, LUNG_LABELS = 11, (10, 11, 12, 13, 14)
PROMPT = "Unilateral pulmonary infection, one infected area, lower {} lung."
OTHER = {"left": "right", "right": "left"}


@pytest.fixture
def logic(slicer_scene, tmp_path):
    import TeViASegment

    return TeViASegment.TeViASegmentLogic(settingsStore=settings.JsonFileSettings(tmp_path / "settings.json"))


def _ct_with_lobe(mirrored: bool):
    """The CT volume node (mirrored or not), a segmentation holding the left lower lobe, and
    the patient side (from RAS) the lobe lies on in that geometry."""
    volume = load_volume(shared_path("volumes", "totalseg-example-ct", "ct.nii.gz"), "ct-mirrored" if mirrored else "ct")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_path("volumes", "totalseg-example-ct", "seg_total.nii.gz"))))
    if mirrored:
        matrix = slicer.util.arrayFromVTKMatrix(_ijk_to_ras(volume))
        volume.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.diag([-1.0, 1, 1, 1]) @ matrix))
    node, (segment_id,) = scene.import_labelmap((labels == LOWER_LOBE_LEFT).astype(np.uint8), {1: "lobe"}, volume)
    matrix = slicer.util.arrayFromVTKMatrix(_ijk_to_ras(volume))

    def ras_x(mask_kji):
        k, j, i = np.nonzero(mask_kji)
        return float((matrix @ np.stack([i, j, k, np.ones_like(i)]).astype(float))[0].mean())

    lungs = np.isin(labels, LUNG_LABELS)
    side = "right" if ras_x(labels == LOWER_LOBE_LEFT) > ras_x(lungs) else "left"  # RAS: +x is the patient's right
    return volume, node, segment_id, side


def _ijk_to_ras(volume):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return matrix


def _exported(dataset: Path) -> list[tuple[dict, str]]:
    """Each row of train.csv with the image half ("left"/"right") its mask mostly lies in."""
    with open(dataset / "train.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    out = []
    for row in rows:
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "Train" / "GTs" / row["Image"]))) > 0
        columns = np.nonzero(mask)[1]
        out.append((row, "left" if columns.mean() < mask.shape[1] / 2 else "right"))
    return out


@pytest.mark.parametrize("mirrored", [False, True], ids=["as-stored", "mirrored-direction"])
def test_patient_convention_prompts_are_exported_with_the_image_side_the_mask_is_on(logic, tmp_path, mirrored):
    volume, node, segment_id, side = _ct_with_lobe(mirrored)
    assert side == ("right" if mirrored else "left")  # the label says left; mirroring moves it
    prompt = PROMPT.format(side)  # the annotator names the patient's side, the module's default
    added = logic.addToTrainingSet(volume, node, segment_id, tmp_path / "ds", prompt=prompt, convention="patient")
    rows = _exported(tmp_path / "ds")
    assert len(rows) == len(added) > 3
    for row, half in rows:
        assert row["Description"] == f"unilateral pulmonary infection, one infected area, lower {half} lung."
        assert (row["Convention"], row["Prompt"], row["PromptConvention"], row["Volume"]) == \
            ("image", prompt, "patient", volume.GetName())
    assert {half for _, half in rows} == {OTHER[side]}  # standard display: the patient's left on the image's right


@pytest.mark.parametrize("mirrored", [False, True], ids=["as-stored", "mirrored-direction"])
def test_image_convention_prompts_keep_their_sides(logic, tmp_path, mirrored):
    volume, node, segment_id, side = _ct_with_lobe(mirrored)
    prompt = PROMPT.format({"left": "Lt", "right": "Rt"}[OTHER[side]])  # image sides as displayed, abbreviated
    logic.addToTrainingSet(volume, node, segment_id, tmp_path / "ds", prompt=prompt, convention="image")
    for row, half in _exported(tmp_path / "ds"):
        assert half == OTHER[side]
        assert row["Description"] == f"unilateral pulmonary infection, one infected area, lower {half} lung."
        assert (row["Prompt"], row["PromptConvention"], row["Convention"]) == (prompt, "image", "image")


def test_a_model_trained_on_patient_sides_gets_patient_sides(logic, tmp_path):
    """The Description follows the model's convention, read from its model.json."""
    folder = tmp_path / "patient-model"
    folder.mkdir()
    (folder / "model.json").write_text('{"side_convention": "patient"}')
    (folder / "model.safetensors").write_bytes(b"")
    volume, node, segment_id, side = _ct_with_lobe(False)
    logic.addToTrainingSet(volume, node, segment_id, tmp_path / "ds", prompt=PROMPT.format(side), model=str(folder))
    for row, _ in _exported(tmp_path / "ds"):
        assert f"lower {side} lung" in row["Description"] and row["Convention"] == "patient"


def test_the_export_imports_no_torch():
    """Slicer's process must not load torch: the export's use of tevia.prompts and
    tevia.volume.geometry stays pure Python + numpy + SimpleITK."""
    module_dir = Path(training_export.__file__).resolve().parents[1]
    code = ("import sys; from TeViASegmentLib import training_export as t; "
            "print(t.model_description('RLL', 'patient', 'image', None)); "
            "t.worker_layout(__import__('numpy').eye(4), (2, 3, 4)); "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(module_dir)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "lower left lung"
