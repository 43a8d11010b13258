"""The Fine-tune panel (TeViASegmentLib.finetune_panel): started from a real parameter node (a
vtkMRMLScriptedModuleNode read as the wrapper reads it) on a real training set of two CT volumes,
a real fine-tune in child processes, cancelled by pressing the button again. Only the Qt button
is a stand-in: an object with its `text` property."""

from __future__ import annotations

import types

import pytest
from slicer_fixtures import slicer_scene  # noqa: F401 (fixture)
from test_finetune import dataset, logic  # noqa: F401 (fixtures)
from test_finetune_settings import _TypedView

from TeViASegmentLib import finetune
from TeViASegmentLib.finetune_panel import FineTunePanel


@pytest.fixture
def panel(logic, slicer_scene, tiny_model_dir):  # noqa: F811 (fixture)
    """(panel, node, ui, events): the panel on the tiny model; events records every callback."""
    node = _TypedView(slicer_scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "TeViASegment"))
    ui = types.SimpleNamespace(fineTuneButton=types.SimpleNamespace(text="Fine-tune"))
    events = types.SimpleNamespace(progress=[], selected=[], messages=[], busy=0)

    def busy() -> None:
        events.busy += 1

    panel = FineTunePanel(logic, ui, lambda: node, lambda: str(tiny_model_dir), events.selected.append,
                          lambda *progress: events.progress.append(progress), events.messages.append, busy)
    return panel, node, ui, events


def test_fine_tune_starts_with_the_nodes_settings_and_pressing_again_cancels(panel, dataset):  # noqa: F811
    panel, node, ui, events = panel
    node.datasetFolder = dataset
    node.fineTuneEpochs = 50
    panel.start()
    job = panel.logic.fineTuneJob
    assert job.settings.epochs == 50 and job.dataset_dir == dataset and job.parent_info["name"]
    assert ui.fineTuneButton.text == "Cancel fine-tuning" and events.busy == 1 and panel.running
    counts = finetune.slices_per_volume(dataset)
    assert list(counts) == ["spleen-ct", "chest-ct"] and min(counts.values()) > 0
    assert events.messages == [f"Fine-tuning {panel.current_model()} on {dataset}... The training set holds "
                               f"{sum(counts.values())} corrected slices: spleen-ct {counts['spleen-ct']}, "
                               f"chest-ct {counts['chest-ct']}."]
    assert events.progress[0] == ("evaluate", 0, len(job._steps)), "the first step reports its progress"
    assert panel.poll()
    panel.toggle()
    assert job.state == "cancelled" and not panel.running and not panel.poll() and not job.work.exists()
    assert ui.fineTuneButton.text == "Fine-tune" and events.selected == []
    assert events.messages[-1] == "Fine-tuning cancelled; nothing was saved."


@pytest.mark.parametrize("epochs, error", [(0, "at least 1 epoch, got 0"), (5, "add segments to the training set first")])
def test_bad_settings_or_training_set_start_nothing(panel, tmp_path, epochs, error):
    panel, node, ui, events = panel
    node.datasetFolder = tmp_path / "empty"
    node.fineTuneEpochs = epochs
    with pytest.raises(ValueError, match=error):
        panel.start()
    assert panel.logic.fineTuneJob is None and not panel.running and not panel.poll()
    assert ui.fineTuneButton.text == "Fine-tune" and events.messages == [] and events.busy == 0
