"""The Slicer Logic surfaces an input unlike the model's training images: a notice on the new
segments and the segmentation node, and in the status line; the segments are created all the
same. Real slicer-core scenes, the real worker and the bundled default model."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import slicer.util
import vtk
from conftest import TESTDATA
from slicer_fixtures import load_volume, slicer_scene  # noqa: F401 (fixture)
from test_logic_worker import worker  # noqa: F401 (fixture: one warm worker for this module)

from TeViASegmentLib import logic as logic_module
from TeViASegmentLib import scene, settings

PROMPT = "Unilateral pulmonary infection, one infected area, lower left lung."

@pytest.fixture
def logic(worker, slicer_scene, tmp_path):
    import TeViASegment

    logic = TeViASegment.TeViASegmentLogic(settingsStore=settings.JsonFileSettings(tmp_path / "settings.json"))
    logic.worker = worker
    return logic


def _segment(logic, volume, node=None):
    job = logic.segmentAsync(volume, [PROMPT], node, model="default", device="cpu",
                             options={"convention": "image"})
    job.wait(300)
    return job


def test_the_prefix_is_the_engines():
    from tevia.inference.domain import WARNING_PREFIX

    assert logic_module.DOMAIN_WARNING_PREFIX == WARNING_PREFIX


def test_a_ct_volume_gets_a_notice_and_its_segment_an_xray_does_not(logic, slicer_scene):
    ct = load_volume(TESTDATA / "volumes" / "totalseg-ct.nii.gz", "ct")
    job = _segment(logic, ct)
    node = job.result
    segment = node.GetSegmentation().GetNthSegment(0)
    assert scene.segment_prompt(segment) == PROMPT, "the segment is created all the same"
    notice = node.GetAttribute(logic_module.NOTICE_TAG)
    assert notice and notice.startswith(logic_module.DOMAIN_WARNING_PREFIX) and "slices look unlike" in notice
    tagged = vtk.reference("")
    assert segment.GetTag(logic_module.NOTICE_TAG, tagged) and str(tagged) == notice
    status = logic.statusLine(job)
    assert status.startswith("Done. Notice: ") and "2D frontal chest X-rays" in status

    row = next(csv.DictReader(open(TESTDATA / "qata_samples" / "samples.csv", encoding="utf-8")))
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(TESTDATA / "qata_samples" / "Images" /
                                                       row["Image"].removeprefix("mask_"))))
    xray = slicer.util.addVolumeFromArray(pixels[np.newaxis], np.diag([-1.0, -1.0, 1.0, 1.0]), "xray")
    job = _segment(logic, xray, node)
    assert logic.statusLine(job) == "Done."
    assert node.GetAttribute(logic_module.NOTICE_TAG) is None, "the node's notice is the latest run's"
    assert not node.GetSegmentation().GetNthSegment(1).HasTag(logic_module.NOTICE_TAG)
    assert segment.HasTag(logic_module.NOTICE_TAG), "the CT's segment keeps its notice"
