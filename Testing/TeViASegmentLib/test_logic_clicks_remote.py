"""Corrective clicks through a remote server (issue 17): the Logic's refineAsync and the
ClickEditor against a real `tevia serve` app on 127.0.0.1 serving the bundled default model, which
carries its fine-tuned click injection (conftest.click_model_dir), on real slicer-core scenes holding real
chest X-rays stacked under a non-identity direction matrix (test_logic_clicks._xray_stack);
the same click through a real local worker process gives the same labelmap."""

from __future__ import annotations


import numpy as np
import pytest
from slicer_fixtures import scene_snapshot, slicer_scene, worker  # noqa: F401 (fixture)
from test_logic_clicks import SIZE, _as_xrays, _editor, _mask, _ras, _xray_stack

from TeViASegmentLib import jobs, scene, settings
from TeViASegmentLib.remote_client import RemoteClient, RemoteError
from tevia.training.click_simulation import dice, next_click

from server_helpers import TOKEN, click_server, module_server, segmenter  # noqa: E402,F401 (fixtures)


def _logic(tmp_path, name: str):
    import TeViASegment

    return TeViASegment.TeViASegmentLogic(settingsStore=settings.JsonFileSettings(tmp_path / f"{name}.json"))


@pytest.fixture
def remote(slicer_scene, tmp_path, click_server):
    logic = _logic(tmp_path, "remote")
    logic.setRemoteServer(click_server.url, TOKEN)
    logic.grantRemoteConsent()
    yield logic
    logic.shutdown()


def _refined(logic, volume, node, segment, request: list[dict], model: str) -> tuple[np.ndarray, dict]:
    """refineAsync's labelmap and answer for one segment's clicks; the scene is not changed."""
    got = []
    job = logic.refineAsync(volume, node, segment, request, lambda labelmap, answer: got.append((labelmap, answer)),
                            model=model, device="cpu")
    job.wait(300)
    return got[0]


def test_a_remote_click_changes_only_its_segment_on_its_slice_as_the_local_worker_does(
        remote, worker, tmp_path, click_model_dir, slicer_scene):
    volume, descriptions, truths = _xray_stack(9)
    node = remote.segment(volume, [descriptions[1], "right lung"], timeoutSeconds=300)
    segment, other = scene.segment_ids(node)
    before, other_before = _mask(node, segment, volume), _mask(node, other, volume)
    click = next_click(_as_xrays(before)[1], truths[1])
    assert click.positive, "the text missed most of the infection: the simulated click is positive"

    messages: list[str] = []
    editor = _editor(remote, messages)
    positive_list, _ = editor.set_target(volume, node, segment, model=str(click_model_dir), device="cpu")
    editor.place(True, _ras(1, click.row, click.col))
    editor.wait()
    after = _mask(node, segment, volume)
    assert messages[-1] == "Click applied: slice 1 (IJK axis 0).", messages
    changed = np.argwhere(after != before)
    assert changed.size and set(changed[:, 2]) == {1}, "only the clicked X-ray (I = 1) changed"
    assert _as_xrays(after)[1][int(click.row), int(click.col)], "the clicked pixel is in the segment now"
    assert dice(_as_xrays(after)[1], truths[1]) > dice(_as_xrays(before)[1], truths[1]) + 0.5  # 0.014 -> 0.850 locally
    assert np.array_equal(_mask(node, other, volume), other_before), "the other segment is untouched"
    assert not remote.worker.running, "the remote path starts no local worker"

    request = [{"ras": list(_ras(1, click.row, click.col)), "positive": True}]
    remote_labelmap, remote_answer = _refined(remote, volume, node, segment, request, str(click_model_dir))
    local = _logic(tmp_path, "local")
    local.worker = worker
    local_labelmap, local_answer = _refined(local, volume, node, segment, request, str(click_model_dir))
    assert (remote_answer["refined_axis"], remote_answer["refined_slices"]) == (0, [1])
    assert (local_answer["refined_axis"], local_answer["refined_slices"]) == (0, [1])
    assert remote_labelmap.shape == local_labelmap.shape == (SIZE, SIZE, 3)
    assert np.array_equal(remote_labelmap, local_labelmap), "the server and the local worker agree voxel for voxel"
    assert np.array_equal(remote_labelmap[:, :, 1] == 1, after[:, :, 1]), "what the editor applied"

    assert editor.undo() and not editor.busy
    assert np.array_equal(_mask(node, segment, volume), before), "undo restores the exact previous voxels"
    assert positive_list.GetNumberOfControlPoints() == 0


def test_a_server_without_click_inputs_is_named_before_the_upload(slicer_scene, tmp_path, module_server):
    """module_server serves the tiny model, which has no click inputs."""
    volume, descriptions, _ = _xray_stack(0)
    voxels, matrix = scene.volume_arrays(volume)
    client = RemoteClient(module_server.url, TOKEN)
    with pytest.raises(RemoteError, match=r"takes no clicks: serve a model trained with clicks"):
        client.segment_answer(voxels, matrix, ["lung"], {}, [[{"ras": [0.0, 0.0, 1.0], "positive": True}]])
    with pytest.raises(ValueError, match=r"clicks must be one list of clicks .* per prompt \(2\)"):
        client.segment_answer(voxels, matrix, ["lung", "heart"], {}, [[{"ras": [0.0, 0.0, 1.0], "positive": True}]])
    answer = client.segment_answer(voxels, matrix, ["lung"], {}, [[]])  # no click: a text-only request
    assert "refined_slices" not in answer.fields and answer.labelmap.shape == voxels.shape

    logic = _logic(tmp_path, "tiny")
    logic.setRemoteServer(module_server.url, TOKEN)
    logic.grantRemoteConsent()
    node = logic.segment(volume, ["lung"], timeoutSeconds=120)
    before = scene_snapshot(slicer_scene)
    job = logic.refineAsync(volume, node, scene.segment_ids(node)[0], [{"ras": [0.0, 0.0, 1.0], "positive": True}],
                            lambda labelmap, answer: pytest.fail("nothing may be applied"))
    with pytest.raises(jobs.JobError, match="The remote server failed: .*takes no clicks"):
        job.wait(120)
    assert scene_snapshot(slicer_scene) == before
