"""The fine-tune settings the Widget reads from the scene's parameter node: the epochs and the
reference set (to detect forgetting), held in a real vtkMRMLScriptedModuleNode as text, the way
Slicer's parameterNodeWrapper serializes them (absent from slicer-core: a small reader stands in
for its typed view)."""

from __future__ import annotations

import pathlib
import typing

import pytest
from conftest import TESTDATA
from slicer_fixtures import slicer_scene  # noqa: F401 (fixture)

from TeViASegmentLib import finetune, parameters

SAMPLES_CSV = TESTDATA / "qata_samples" / "samples.csv"


class _TypedView:
    """The parameter node's values typed by `TeViASegmentParameters`' annotations, with its
    defaults where the node holds nothing (what the wrapper's attributes give)."""

    def __init__(self, node) -> None:
        object.__setattr__(self, "node", node)

    def __getattr__(self, name: str):
        text = self.node.GetParameter(name)
        if not text:
            return getattr(parameters.TeViASegmentParameters, name)
        return typing.get_type_hints(parameters.TeViASegmentParameters)[name](text)

    def __setattr__(self, name: str, value) -> None:
        self.node.SetParameter(name, str(value))


@pytest.fixture
def node(slicer_scene):
    return _TypedView(slicer_scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "TeViASegment"))


def test_a_new_parameter_node_fine_tunes_5_epochs_without_a_reference_set(node):
    settings = finetune.settings_from_parameters(node)
    assert settings.epochs == 5 and settings.reference_data == ""
    assert node.fineTuneReference == pathlib.Path(".")  # what an empty path field gives


def test_a_splits_csv_in_the_parameter_node_becomes_the_reference_set(node):
    node.fineTuneEpochs = 3
    node.fineTuneReference = SAMPLES_CSV
    assert node.node.GetParameter("fineTuneReference") == str(SAMPLES_CSV), "saved with the scene"
    settings = finetune.settings_from_parameters(node)
    assert (settings.epochs, settings.reference_data, settings.reference_split) == (3, str(SAMPLES_CSV.parent), "samples")


def test_a_data_set_folder_names_its_val_split(node, tmp_path):
    (tmp_path / "val.csv").write_text("Image,Description\n")
    node.fineTuneReference = tmp_path
    assert finetune.reference_set(node.fineTuneReference) == (str(tmp_path), "val")


@pytest.mark.parametrize("make", [lambda p: p / "absent.csv", lambda p: p, lambda p: p / "notes.txt"],
                         ids=["missing-file", "folder-without-val-csv", "not-a-csv"])
def test_a_reference_set_that_is_not_one_is_refused_with_what_to_choose(node, tmp_path, make):
    (tmp_path / "notes.txt").write_text("x")
    node.fineTuneReference = make(tmp_path)
    with pytest.raises(ValueError, match=r"neither a split's CSV file nor a folder holding val\.csv.*leave the field empty"):
        finetune.settings_from_parameters(node)


def test_zero_epochs_are_refused(node):
    node.fineTuneEpochs = 0
    with pytest.raises(ValueError, match="at least 1 epoch, got 0"):
        finetune.settings_from_parameters(node)
