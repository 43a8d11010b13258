"""Corrective clicks in the Slicer module (issue 17): real MRML scenes (slicer-core), a real
worker process, the bundled default model with its fine-tuned click injection (conftest.click_model_dir)
and real chest X-rays (Testing/data/qata_samples) stacked into a volume whose IJK axes are
permuted and flipped against RAS (a non-identity direction matrix)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import slicer.util
from conftest import TESTDATA
from slicer_fixtures import scene_snapshot, slicer_scene, worker  # noqa: F401 (fixture)

from TeViASegmentLib import clicks, scene, settings, slice_edits
from TeViASegmentLib.click_editor import ClickEditor
from tevia.training.click_simulation import dice, next_click

QATA = TESTDATA / "qata_samples"
SIZE = 224
# The stack's IJK-to-RAS: I -> S (the X-ray index), J -> A, K -> -R; a 2D X-ray's own is diag(-1, -1, 1).
STACK_IJK_TO_RAS = np.array([[0, 0, -1, 0], [0, 1, 0, -(SIZE - 1.0)], [1, 0, 0, 0], [0, 0, 0, 1]])


def _as_xrays(array_kji: np.ndarray) -> np.ndarray:
    """A (K, J, I) array of the stack -> (X-ray, row, column), each X-ray as its file holds it."""
    return array_kji.transpose(2, 1, 0)[:, ::-1, :]


def _xray_stack(first: int):
    """Three QaTa val X-rays (samples first..first+2) as one volume node; their descriptions
    and ground-truth masks (X-ray, row, column)."""
    rows = list(csv.DictReader(open(QATA / "samples.csv", encoding="utf-8")))[first:first + 3]
    images = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(QATA / "Images" / r["Image"].removeprefix("mask_"))))
                       for r in rows])
    truths = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(QATA / "GTs" / r["Image"]))) > 0 for r in rows])
    array_kji = np.ascontiguousarray(images.transpose(2, 1, 0)[:, ::-1, :])
    assert np.array_equal(_as_xrays(array_kji), images)
    volume = slicer.util.addVolumeFromArray(array_kji, STACK_IJK_TO_RAS, "xray stack")
    return volume, [r["Description"] for r in rows], truths


def _ras(xray: int, row: float, column: float) -> tuple[float, float, float]:
    """The RAS point of a pixel of one X-ray of the stack (a 2D X-ray's I, J, K = column, row, 0)."""
    return (-column, -row, float(xray))


@pytest.fixture
def logic(worker, slicer_scene, tmp_path):
    import TeViASegment

    logic = TeViASegment.TeViASegmentLogic(settingsStore=settings.JsonFileSettings(tmp_path / "settings.json"))
    logic.worker = worker
    return logic


def _editor(logic, messages: list[str]) -> ClickEditor:
    return ClickEditor(logic, app_logic=slicer.modules.volumes.logic().GetMRMLApplicationLogic(),
                       on_message=messages.append)


def _segmented(logic, model, first: int):
    """The stack, segmented from the middle X-ray's description (segment 0) and "right lung"."""
    volume, descriptions, truths = _xray_stack(first)
    node = logic.segment(volume, [descriptions[1], "right lung"], model=str(model), device="cpu", timeoutSeconds=300)
    return volume, node, scene.segment_ids(node), truths


def _mask(node, segment_id, volume) -> np.ndarray:
    return slicer.util.arrayFromSegmentBinaryLabelmap(node, segment_id, volume).astype(bool)


def test_a_click_grows_its_segment_on_its_slice_only_and_undo_restores_it(logic, click_model_dir):
    volume, node, (segment, other), truths = _segmented(logic, click_model_dir, 9)
    edit = np.zeros((SIZE, SIZE, 1), dtype=bool)
    edit[100:120, 30:60] = True  # a manual edit on X-ray 0 (I = 0), as Segment Editor would make it
    slice_edits.set_segment_slices(edit, 0, [0], volume, node, segment)
    before, other_before = _mask(node, segment, volume), _mask(node, other, volume)
    text_dice = dice(_as_xrays(before)[1], truths[1])
    click = next_click(_as_xrays(before)[1], truths[1])
    assert click.positive, "the text missed most of the infection: the simulated click is positive"

    messages: list[str] = []
    editor = _editor(logic, messages)
    positive_list, negative_list = editor.set_target(volume, node, segment, model=str(click_model_dir), device="cpu")
    editor.place(True, _ras(1, click.row, click.col))
    editor.wait()

    after = _mask(node, segment, volume)
    changed = np.argwhere(after != before)
    assert changed.size and set(changed[:, 2]) == {1}, "only the clicked X-ray (I = 1) changed"
    assert _as_xrays(after)[1][int(click.row), int(click.col)], "the clicked pixel is in the segment now"
    click_dice = dice(_as_xrays(after)[1], truths[1])
    assert text_dice < 0.1 and click_dice > 0.7  # measured 0.014 -> 0.850
    assert np.array_equal(_mask(node, other, volume), other_before), "the other segment is untouched"
    assert np.array_equal(after[:, :, 0], before[:, :, 0]) and after[110, 40, 0], "the manual edit is kept"
    assert positive_list.GetNumberOfControlPoints() == 1 and negative_list.GetNumberOfControlPoints() == 0
    assert positive_list.GetDisplayNode().GetSelectedColor() == pytest.approx(clicks.POSITIVE_COLOR)
    assert messages[-1] == "Click applied: slice 1 (IJK axis 0)."

    assert editor.undo() and not editor.busy
    assert np.array_equal(_mask(node, segment, volume), before), "undo restores the exact previous voxels"
    assert positive_list.GetNumberOfControlPoints() == 0 and editor.steps == []
    assert not editor.undo(), "nothing left to undo"


def test_a_negative_click_removes_a_false_region_and_deleting_its_point_undoes_it(logic, click_model_dir):
    volume, node, (segment, _), truths = _segmented(logic, click_model_dir, 15)
    before = _mask(node, segment, volume)
    click = next_click(_as_xrays(before)[1], truths[1])
    assert not click.positive and _as_xrays(before)[1][int(click.row), int(click.col)]
    editor = _editor(logic, [])
    _, negative_list = editor.set_target(volume, node, segment, model=str(click_model_dir), device="cpu")
    editor.place(False, _ras(1, click.row, click.col))
    editor.wait()
    after = _mask(node, segment, volume)
    assert not _as_xrays(after)[1][int(click.row), int(click.col)], "the clicked false region is gone"
    assert dice(_as_xrays(after)[1], truths[1]) > dice(_as_xrays(before)[1], truths[1]) + 0.03  # 0.839 -> 0.903
    negative_list.RemoveNthControlPoint(0)  # the Markups module's delete
    assert np.array_equal(_mask(node, segment, volume), before)


def test_removing_an_earlier_click_reruns_its_slice_with_the_clicks_left(logic, click_model_dir):
    volume, node, (segment, _), truths = _segmented(logic, click_model_dir, 9)
    text = _mask(node, segment, volume)
    editor = _editor(logic, [])
    positive_list, _ = editor.set_target(volume, node, segment, model=str(click_model_dir), device="cpu")
    first = next_click(_as_xrays(text)[1], truths[1])
    editor.place(first.positive, _ras(1, first.row, first.col))
    editor.wait()
    second = next_click(_as_xrays(_mask(node, segment, volume))[1], truths[1])
    editor.place(second.positive, _ras(1, second.row, second.col))
    third = next_click(_as_xrays(text)[2], truths[2])
    editor.place(third.positive, _ras(2, third.row, third.col))  # queued while the second runs
    editor.wait()
    two_clicks = _mask(node, segment, volume)
    assert len(editor.steps) == 3 and not np.array_equal(two_clicks[:, :, 2], text[:, :, 2])

    assert first.positive
    positive_list.RemoveNthControlPoint(0)  # the first click, deleted in the Markups module
    editor.wait()  # X-ray 1 is run again with the second click alone
    rerun = _mask(node, segment, volume)
    assert set(np.argwhere(rerun != two_clicks)[:, 2]) <= {1}
    assert np.array_equal(rerun[:, :, 2], two_clicks[:, :, 2]), "the third click's X-ray is untouched"

    assert editor.steps[0].previous is None, "the second click's saved voxels held the first click's effect"
    assert editor.undo() and editor.undo()  # the third (exact), then the second (no click left: the text result)
    editor.wait()
    assert np.array_equal(_mask(node, segment, volume), text)


def test_a_point_outside_the_volume_is_refused_and_changes_nothing(logic, click_model_dir, slicer_scene):
    volume, node, (segment, _), _ = _segmented(logic, click_model_dir, 9)
    messages: list[str] = []
    editor = _editor(logic, messages)
    positive_list, _ = editor.set_target(volume, node, segment, model=str(click_model_dir), device="cpu")
    snapshot = scene_snapshot(slicer_scene)
    outside = r"lies outside volume 'xray stack' .*size 3 x 224 x 224.*place clicks on the image"
    with pytest.raises(ValueError, match=outside):
        editor.place(True, _ras(3, 10, 10))  # a fourth X-ray that is not there
    positive_list.AddControlPointWorld(-10.0, 400.0, 1.0)  # placed in a view, beyond the image
    assert "lies outside volume" in messages[-1] and messages[-1].endswith("The point was removed.")
    assert not editor.busy and scene_snapshot(slicer_scene) == snapshot


def test_a_model_without_click_inputs_is_named_and_the_point_removed(logic, tiny_model_dir):
    volume, node, (segment, _), _ = _segmented(logic, tiny_model_dir, 0)
    before = _mask(node, segment, volume)
    messages: list[str] = []
    editor = _editor(logic, messages)
    positive_list, _ = editor.set_target(volume, node, segment, model=str(tiny_model_dir), device="cpu")
    editor.place(True, _ras(1, 100, 100))
    editor.wait()
    assert "takes no clicks" in messages[-1] and "load a model trained with clicks" in messages[-1]
    assert positive_list.GetNumberOfControlPoints() == 0 and np.array_equal(_mask(node, segment, volume), before)
