"""The click panel's state (TeViASegmentLib.click_panel): P / N / Esc / Ctrl+Z and its buttons, on
real MRML scenes (slicer-core: real interaction, selection and markups nodes, a real ClickEditor
and Logic). Only the Qt widgets are stand-ins: objects with the Python properties the panel sets
and the selector's two getters; no worker is started (a queued click is undone before it runs)."""

from __future__ import annotations

import types
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import slicer
import slicer.util
from slicer_fixtures import oblique_volume, scene_snapshot, slicer_scene  # noqa: F401 (fixture)

from TeViASegmentLib import clicks, scene, settings
from TeViASegmentLib.click_panel import SHORTCUTS, ClickPanel

UI_FILE = Path(__file__).resolve().parents[2] / "TeViASegment" / "Resources" / "UI" / "TeViASegment.ui"


class _Selector:
    """qMRMLSegmentSelectorWidget's two getters the panel calls."""

    def __init__(self, node=None, segment_id: str = "") -> None:
        self.node, self.segment_id = node, segment_id

    def currentNode(self):
        return self.node

    def currentSegmentID(self) -> str:
        return self.segment_id


def _ui(node=None, segment_id: str = ""):
    button = lambda: types.SimpleNamespace(checked=False)  # noqa: E731 (QPushButton's `checked` property)
    return types.SimpleNamespace(clickSegmentSelector=_Selector(node, segment_id), positiveClickButton=button(),
                                 negativeClickButton=button(), undoClickButton=button())


@pytest.fixture
def setup(slicer_scene, tmp_path):
    """A segmented oblique CT and a panel on its segment: (panel, ui, volume, segmentation, segment, messages)."""
    import TeViASegment

    volume = oblique_volume()
    labels = np.zeros(slicer.util.arrayFromVolume(volume).shape, dtype=np.uint8)
    labels[:, 20:60, 30:80] = 1
    node, (segment,) = scene.import_labelmap(labels, {1: "lung"}, volume)
    logic = TeViASegment.TeViASegmentLogic(settingsStore=settings.JsonFileSettings(tmp_path / "settings.json"))
    ui, messages = _ui(node, segment), []
    panel = ClickPanel(logic, ui, lambda: (volume, {"model": "default", "device": "cpu"}), messages.append,
                       lambda: None, app_logic=slicer.modules.volumes.logic().GetMRMLApplicationLogic())
    yield panel, ui, volume, node, segment, messages
    panel.cleanup()
    logic.shutdown()


def _buttons(ui) -> tuple[bool, bool]:
    return ui.positiveClickButton.checked, ui.negativeClickButton.checked


def test_p_and_n_switch_the_point_kind_and_pressing_it_again_or_esc_stops(setup):
    panel, ui, _, node, segment, _ = setup
    keys = panel.shortcut_actions()
    positive, negative = clicks.click_lists(node, segment)
    selection = panel.editor.app_logic.GetSelectionNode()
    keys["P"]()
    assert clicks.placing(panel.editor.app_logic) is True and _buttons(ui) == (True, False)
    assert selection.GetActivePlaceNodeID() == positive.GetID()
    keys["N"]()
    assert clicks.placing(panel.editor.app_logic) is False and _buttons(ui) == (False, True)
    assert selection.GetActivePlaceNodeID() == negative.GetID()
    keys["N"]()
    assert clicks.placing(panel.editor.app_logic) is None and _buttons(ui) == (False, False)
    keys["N"]()
    keys["Escape"]()
    assert clicks.placing(panel.editor.app_logic) is None and _buttons(ui) == (False, False)


def test_the_buttons_follow_place_mode_changed_outside_the_panel(setup):
    """The toolbar's mouse mode, a right-click, another markups list chosen for placing."""
    panel, ui, *_ = setup
    interaction = panel.editor.app_logic.GetInteractionNode()
    panel.place_positive()
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)
    assert _buttons(ui) == (False, False)
    panel.place_negative()
    other = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "landmarks")
    panel.editor.app_logic.GetSelectionNode().SetActivePlaceNodeID(other.GetID())
    assert interaction.GetCurrentInteractionMode() == interaction.Place and _buttons(ui) == (False, False)
    panel.cleanup()
    panel.editor.app_logic.GetSelectionNode().SetActivePlaceNodeID(clicks.click_lists(*setup[3:5])[0].GetID())
    assert _buttons(ui) == (False, False), "a panel cleaned up observes nothing"


def test_ctrl_z_removes_the_last_click_of_the_segment_before_it_runs(setup):
    panel, ui, volume, node, segment, messages = setup
    keys = panel.shortcut_actions()
    keys["P"]()
    center = np.array(volume.GetImageData().GetDimensions()) / 2
    matrix = scene.ijk_to_ras(volume)
    world = tuple((matrix @ np.array([*center, 1.0]))[:3])
    panel.editor.place(True, world)
    positive, _ = clicks.click_lists(node, segment)
    assert positive.GetNumberOfControlPoints() == 1 and panel.editor.busy, "queued for a run"
    keys["Ctrl+Z"]()
    assert positive.GetNumberOfControlPoints() == 0 and not panel.editor.busy, "removed and no longer queued"
    keys["Ctrl+Z"]()
    assert messages[-1] == "No click to undo on this segment."
    assert clicks.placing(panel.editor.app_logic) is True, "undo keeps placing"


def test_without_a_segment_nothing_starts_and_the_user_is_told_what_to_do(setup, slicer_scene):
    panel, ui, volume, *_ = setup
    ui.clickSegmentSelector.segment_id = ""
    before = scene_snapshot(slicer_scene)
    with pytest.raises(ValueError, match="Choose the volume and a TeViA segment to correct first"):
        panel.place_positive()
    assert clicks.placing(panel.editor.app_logic) is None and _buttons(ui) == (False, False)
    assert scene_snapshot(slicer_scene) == before


def test_a_declined_server_choice_starts_nothing(slicer_scene, tmp_path):
    """The Widget returns None when the user does not agree to send the volume to the server."""
    import TeViASegment

    logic = TeViASegment.TeViASegmentLogic(settingsStore=settings.JsonFileSettings(tmp_path / "settings.json"))
    ui = _ui()
    panel = ClickPanel(logic, ui, lambda: None, [].append, lambda: None,
                       app_logic=slicer.modules.volumes.logic().GetMRMLApplicationLogic())
    before = scene_snapshot(slicer_scene)
    panel.place_positive()
    assert clicks.placing(panel.editor.app_logic) is None and scene_snapshot(slicer_scene) == before
    panel.cleanup()


def test_the_buttons_name_the_keys_that_are_bound():
    texts = {w.get("name"): w.findtext("property[@name='text']/string")
             for w in ET.parse(UI_FILE).iter("widget") if w.get("name", "").endswith("ClickButton")}
    assert set(SHORTCUTS) == {"P", "N", "Escape", "Ctrl+Z"}
    assert texts["positiveClickButton"].endswith("[P]") and texts["negativeClickButton"].endswith("[N]")
    assert texts["undoClickButton"].endswith("[Ctrl+Z]")
