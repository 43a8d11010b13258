"""The Logic's remote mode against a real `tevia serve` app on 127.0.0.1 (slicer-core scenes)."""

from __future__ import annotations


import pytest
import slicer
import slicer.util
from conftest import shared_path
from slicer_fixtures import load_volume, scene_snapshot, slicer_scene  # noqa: F401 (fixture)

from TeViASegmentLib import jobs, settings

from server_helpers import TOKEN, module_server, segmenter  # noqa: E402,F401 (fixtures)


@pytest.fixture
def logic(slicer_scene, tmp_path, module_server):
    import TeViASegment

    logic = TeViASegment.TeViASegmentLogic(settingsStore=settings.JsonFileSettings(tmp_path / "settings.json"))
    logic.setRemoteServer(module_server.url, TOKEN)
    logic.grantRemoteConsent()
    yield logic
    logic.shutdown()


@pytest.fixture
def volume(slicer_scene):
    return load_volume(shared_path("volumes", "spinalcord-t2-mri", "t2.nii.gz"), "t2")


def test_remote_segmentation_lands_in_the_scene_with_the_volume_geometry(logic, volume):
    assert logic.testRemoteConnection()["device"] == "cpu"
    node = logic.segment(volume, "lower left lung\nright lung", timeoutSeconds=300)
    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(2)] == ["lower left lung", "right lung"]
    assert node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()) is volume
    assert not logic.worker.running, "remote mode starts no local worker"


def test_remote_errors_are_clear_and_leave_the_scene_unchanged(logic, volume, slicer_scene, module_server):
    before = scene_snapshot(slicer_scene)
    logic.setRemoteServer(module_server.url, "wrong-token")
    with pytest.raises(jobs.JobError, match=r"The remote server failed: .*refused the token \(401\)"):
        logic.segment(volume, ["lung"], timeoutSeconds=120)
    assert scene_snapshot(slicer_scene) == before


def test_remote_cancel_leaves_the_scene_unchanged(logic, volume, slicer_scene):
    before = scene_snapshot(slicer_scene)
    job = logic.segmentAsync(volume, ["lower left lung"])
    job.cancel()
    with pytest.raises(jobs.JobCancelled):
        job.wait(60)
    assert scene_snapshot(slicer_scene) == before
