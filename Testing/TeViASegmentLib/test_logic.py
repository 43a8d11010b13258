"""TeViASegmentLogic on real MRML scenes, with a real worker process.

The flow tests (new / existing segmentation, cancel, errors, crash) use protocol_worker.py, a
small real process speaking the worker protocol; test_logic_worker.py runs the engine's own
worker with a real model.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import slicer
import slicer.util
from conftest import shared_path
from slicer_fixtures import load_volume, scene_snapshot, slicer_scene  # noqa: F401 (fixture)

from TeViASegmentLib import jobs, models, settings
from TeViASegmentLib.worker_client import WorkerClient

HERE = Path(__file__).resolve().parent


@pytest.fixture
def logic(slicer_scene, tmp_path):
    import TeViASegment

    logic = TeViASegment.TeViASegmentLogic(settingsStore=settings.JsonFileSettings(tmp_path / "settings.json"))
    logic.worker = WorkerClient(python=sys.executable, args=[str(HERE / "protocol_worker.py")])
    logic.cancelGraceSeconds = 1.0
    yield logic
    logic.worker.kill()


@pytest.fixture
def volume(slicer_scene):
    return load_volume(shared_path("volumes", "spinalcord-t2-mri", "t2.nii.gz"), "t2")


def test_segment_returns_a_new_segmentation_with_the_volume_geometry(logic, volume):
    node = logic.segment(volume, "spinal cord\nleft lung", timeoutSeconds=60)
    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(2)] == ["spinal cord", "left lung"]
    voxels = slicer.util.arrayFromVolume(volume)
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentation.GetNthSegmentID(0), volume)
    np.testing.assert_array_equal(mask.astype(bool), voxels > voxels.mean())
    assert node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()) is volume
    assert logic.settings.prompt_history()[:2] == ["spinal cord", "left lung"]


def test_existing_segmentation_keeps_its_segments(logic, volume, slicer_scene):
    first = logic.segment(volume, ["spinal cord"], timeoutSeconds=60)
    before = {k: v for k, v in scene_snapshot(slicer_scene).items() if isinstance(k, tuple)}
    same = logic.segment(volume, ["spinal cord"], first, timeoutSeconds=60)
    after = scene_snapshot(slicer_scene)
    assert same is first and first.GetSegmentation().GetNumberOfSegments() == 2
    assert all(after[key] == value for key, value in before.items()), "the first segment is unchanged"
    assert first.GetSegmentation().GetNthSegment(1).GetName() == "spinal cord (2)"


def test_async_job_reports_progress_and_warnings_and_calls_on_done(logic, volume):
    progress, warnings, done = [], [], []
    job = logic.segmentAsync(volume, ["x"], onProgress=lambda *p: progress.append(p),
                             onWarning=warnings.append, onDone=done.append)
    while job.poll(0.05):
        pass
    assert done == [job] and job.state == "done" and job.result.IsA("vtkMRMLSegmentationNode")
    assert progress[-1][1] == progress[-1][2] == slicer.util.arrayFromVolume(volume).shape[0]
    assert warnings == ["out-of-domain words in prompt: demo"]
    assert logic.workerInfo.get("device") == "cpu"


def test_cancel_leaves_the_scene_exactly_as_before(logic, volume, slicer_scene):
    existing = logic.segment(volume, ["spinal cord"], timeoutSeconds=60)
    before = scene_snapshot(slicer_scene)
    for target in (None, existing):
        job = logic.segmentAsync(volume, ["hang"], target)
        time.sleep(0.3)
        job.poll()
        logic.cancel()
        with pytest.raises(jobs.JobCancelled):
            job.wait(30)
        assert scene_snapshot(slicer_scene) == before
    node = logic.segment(volume, ["spinal cord"], timeoutSeconds=60)
    assert node is not existing, "after a cancel (process tree ended) the next request works"


def test_worker_error_surfaces_as_a_clear_message_and_scene_is_unchanged(logic, volume, slicer_scene):
    before = scene_snapshot(slicer_scene)
    with pytest.raises(jobs.JobError, match="demo failure"):
        logic.segment(volume, ["fail"], timeoutSeconds=60)
    job = logic.segmentAsync(volume, ["crash"])
    while job.poll(0.05):
        pass
    assert job.state == "failed" and "stopped unexpectedly" in job.error
    assert scene_snapshot(slicer_scene) == before
    assert logic.segment(volume, ["spinal cord"], timeoutSeconds=60).GetSegmentation().GetNumberOfSegments() == 1


@pytest.mark.parametrize("kwargs,message", [
    ({"prompts": " \n  "}, "prompts must hold at least one non-empty prompt"),
    ({"device": "tpu"}, "device must be one of"),
    ({"precision": "fp16"}, "precision must be one of"),
    ({"options": {"convention": "radiological"}}, r"options\['convention'\] must be one of"),
    ({"model": "no-such-model"}, "model 'no-such-model' is not in the catalogue"),
    ({"model": "/nonexistent/folder"}, "must hold model.json and model.safetensors"),
])
def test_bad_arguments_are_refused_with_the_argument_named(logic, volume, slicer_scene, kwargs, message):
    before = scene_snapshot(slicer_scene)
    arguments = {"volumeNode": volume, "prompts": "liver", **kwargs}
    with pytest.raises(ValueError, match=message):
        logic.segmentAsync(**arguments)
    assert scene_snapshot(slicer_scene) == before


def test_a_second_job_while_one_runs_is_refused(logic, volume):
    job = logic.segmentAsync(volume, ["hang"])
    with pytest.raises(RuntimeError, match="already running"):
        logic.segmentAsync(volume, ["x"])
    job.cancel()
    with pytest.raises(jobs.JobCancelled):
        job.wait(30)


def test_remote_mode_needs_consent_and_remembers_the_token_only_on_request(logic, volume, tmp_path):
    logic.setRemoteServer("http://127.0.0.1:9/", "secret", rememberToken=False)
    assert logic.remoteUrl == "http://127.0.0.1:9" and logic.remoteConsentNeeded()
    with pytest.raises(PermissionError, match="consent"):
        logic.segmentAsync(volume, ["x"])
    assert logic.settings.remote_token() is None
    logic.setRemoteServer("http://127.0.0.1:9", "secret", rememberToken=True)
    assert logic.settings.remote_token() == "secret"
    logic.grantRemoteConsent()
    assert not logic.remoteConsentNeeded()
    reloaded = settings.ModuleSettings(settings.JsonFileSettings(tmp_path / "settings.json"))
    assert reloaded.has_consent("http://127.0.0.1:9/") and not reloaded.has_consent("http://other:8000")
    logic.setRemoteServer("")
    assert logic.remoteUrl is None


def test_add_to_training_set_writes_the_segment_slices_with_its_prompt(logic, volume, tmp_path):
    node = logic.segment(volume, ["spinal cord"], timeoutSeconds=60)
    segment_id = node.GetSegmentation().GetNthSegmentID(0)
    added = logic.addToTrainingSet(volume, node, segment_id, tmp_path / "dataset")
    lines = (tmp_path / "dataset" / "train.csv").read_text().splitlines()
    assert lines[0] == "Image,Description,Convention,Prompt,PromptConvention,Volume" and len(lines) == 1 + len(added) > 1
    assert all(line.endswith(",spinal cord,image,spinal cord,patient,t2") for line in lines[1:])
    with pytest.raises(ValueError, match="segmentId 'nope'"):
        logic.addToTrainingSet(volume, node, "nope", tmp_path / "dataset")


def test_example_prompts_come_from_the_catalogue_or_the_model_folder(logic, tmp_path):
    card = json.loads((models.BUNDLED_MODELS_DIR / "default" / "model.json").read_text())
    assert logic.examplePrompts("default") == card["example_prompts"] and card["example_prompts"]
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "model.json").write_text('{"example_prompts": ["left lower lobe nodule"]}')
    (folder / "model.safetensors").write_bytes(b"")
    assert logic.examplePrompts(str(folder)) == ["left lower lobe nodule"]
    assert logic.examplePrompts(str(tmp_path / "missing")) == []


def test_a_worker_that_cannot_start_fails_clearly_and_leaves_no_temporary_files(logic, volume, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    logic.worker = WorkerClient(python=str(tmp_path / "no-such-python"))
    with pytest.raises(RuntimeError, match="Could not start the TeViA worker"):
        logic.segmentAsync(volume, ["x"])
    assert not list(tmp_path.glob("TeViA-*"))


def test_training_export_slices_axially_like_the_worker_on_a_permuted_volume(logic, tmp_path):
    """The spinal-cord MRI is stored PSR: K is not the superior-inferior axis, so exporting raw
    K slices would give sagittal images; the export must give one image per axial slice."""
    from TeViASegmentLib import scene

    volume = load_volume(shared_path("volumes", "spinalcord-t2-mri", "t2.nii.gz"), "t2")
    mask_volume = load_volume(shared_path("volumes", "spinalcord-t2-mri", "spinalcord_manual.nii.gz"), "cord")
    mask = slicer.util.arrayFromVolume(mask_volume) > 0
    node, (segment_id,) = scene.import_labelmap(mask.astype(np.uint8), {1: "spinal cord"}, volume)
    _, ijk_to_ras = scene.volume_arrays(volume)
    superior_axis = int(np.argmax(np.abs(ijk_to_ras[2, :3])))  # index axis I=0, J=1, K=2 along S
    numpy_axis = 2 - superior_axis
    assert numpy_axis != 0, "the test volume must not be stored axially"
    expected = int(np.count_nonzero(mask.any(axis=tuple(a for a in range(3) if a != numpy_axis))))
    added = logic.addToTrainingSet(volume, node, segment_id, tmp_path / "ds")
    assert len(added) == expected
