"""The Fine-tune panel tells the annotator what the training set holds per scan (acquisition)
and, once the fine-tune is done, Dice before and after on the held-out slices: a real training
set of Radiopaedia-style CT slices added with the Logic's "Add to training set" on a real
slicer-core scene (bench/ct_site_export.py), a real fine-tune of the tiny model in child processes."""

from __future__ import annotations

import json
import sys
import tempfile

import pytest
from conftest import REPO, shared_path
from slicer_fixtures import slicer_scene  # noqa: F401 (fixture)
from test_finetune import logic  # noqa: F401 (fixture)
from test_finetune_panel import panel  # noqa: F401 (fixture)

sys.path.insert(0, str(REPO / "bench"))
import ct_site_export  # noqa: E402

SLICES = {"radiopaedia-1": 4, "radiopaedia-2": 5}


@pytest.fixture
def site_set(logic, tmp_path):  # noqa: F811 (fixture)
    """The first slices of val's two Radiopaedia-style scans, added to a training set as the module does."""
    root = shared_path("covid-ct-slices")
    scans = {scan.span: scan for scan in ct_site_export.find_scans(root, "val")}
    folder = tmp_path / "site"
    with tempfile.TemporaryDirectory() as work:
        for name, count in SLICES.items():
            scan = scans[ct_site_export.SITE_SCANS[name]]
            images, masks = ct_site_export.scan_slices(root, "val", scan)
            ct_site_export.add_scan_to_training_set(logic, images[:count], masks[:count], scan.descriptions[:count],
                                                    name, folder, "default", work)
    return folder


def test_the_panel_says_what_the_set_holds_and_the_held_out_dice_before_and_after(panel, site_set):  # noqa: F811
    panel, node, ui, events = panel
    assert panel.training_set_summary(site_set) == \
        "The training set holds 9 corrected slices: radiopaedia-1 4, radiopaedia-2 5."
    assert panel.training_set_summary(site_set / "nothing-yet") == ""
    node.datasetFolder = site_set
    node.fineTuneEpochs = 2
    panel.start()
    assert events.messages[-1].endswith("The training set holds 9 corrected slices: radiopaedia-1 4, radiopaedia-2 5.")
    job = panel.logic.fineTuneJob
    job.wait(600)
    assert job.state == "done", job.error
    info = json.loads((job.result / "model.json").read_text())
    tuning = info["fine_tuning"]
    before, after = tuning["evaluations"]["held_out_before"], tuning["evaluations"]["held_out_after"]
    held_out = tuning["held_out_volumes"]
    assert len(held_out) == 1 and after["n"] == SLICES[held_out[0]]
    assert events.selected == [job.result.name]
    assert events.messages[-1].endswith(
        f"On {after['n']} held-out slices ({held_out[0]}): pooled Dice {before['dice_global']:.2f} -> "
        f"{after['dice_global']:.2f} (mean over slices {before['dice_mean']:.2f} -> {after['dice_mean']:.2f}).")
