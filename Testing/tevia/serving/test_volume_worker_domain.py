"""The worker process reports inputs unlike the bundled model's training images: a `warning`
event and `domain` in the result (and its sidecar); a real X-ray gets neither."""

from __future__ import annotations

import csv
import json

import pytest

from test_volume_worker import WorkerProcess
from volume_fixtures import TESTDATA, VOLUMES

PREFIX = "Unlike the training images: "
PROMPT = "Unilateral pulmonary infection, one infected area, lower left lung."


@pytest.fixture(scope="module")
def default_worker():
    process = WorkerProcess()
    loaded = process.request({"id": "load", "type": "load", "model": "default", "device": "cpu"})
    assert loaded[-1]["event"] == "result", loaded
    yield process
    process.close()


def _xray():
    row = next(csv.DictReader(open(TESTDATA / "qata_samples" / "samples.csv", encoding="utf-8")))
    return TESTDATA / "qata_samples" / "Images" / row["Image"].removeprefix("mask_")


@pytest.mark.parametrize("name", ["totalseg-ct.nii.gz", "spinalcord-t2.nii.gz", "totalseg-ct-slice15.png", "xray"])
def test_worker_warns_about_ct_mri_and_a_ct_png_but_not_an_xray(default_worker, tmp_path, name):
    source = _xray() if name == "xray" else VOLUMES / name
    output = tmp_path / ("mask.png" if source.suffix == ".png" else "mask.nii.gz")
    events = default_worker.request({"id": name, "type": "segment", "input": str(source), "prompts": [PROMPT],
                                     "output": str(output)})
    result = events[-1]
    assert result["event"] == "result", events
    warned = [e["message"] for e in events if e["event"] == "warning" and e["message"].startswith(PREFIX)]
    domain = result["domain"]
    assert domain["checked"] is True
    if name == "xray":
        assert warned == [] and domain["warning"] is None and domain["unlike"] == 0
    else:
        assert warned == [domain["warning"]] and domain["warning"] in result["warnings"]
        assert domain["unlike"] > 0 and "frontal chest X-rays" in domain["warning"]
    sidecar = json.loads(next(p for p in tmp_path.iterdir() if p.suffix == ".json").read_text())
    assert sidecar["domain"] == domain
    assert output.is_file()
