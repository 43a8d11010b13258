"""POST /v1/segment with the bundled model: the response says when an input is unlike the
model's training images (CT, MRI, a CT slice's 8-bit pixels), and not for a real X-ray; nothing refused."""

from __future__ import annotations

import csv
from collections.abc import Iterator

import httpx
import pytest
import SimpleITK as sitk

from conftest import TESTDATA
from server_helpers import TOKEN, LiveServer, auth, read_answer

PREFIX = "Unlike the training images: "
PROMPT = "Unilateral pulmonary infection, one infected area, lower left lung."


@pytest.fixture(scope="module")
def default_server(tmp_path_factory) -> Iterator[LiveServer]:
    import torch

    from tevia.inference.segmenter import Segmenter
    from tevia.serving.server import ServerSettings, create_app

    torch.set_num_threads(1)
    settings = ServerSettings(token=TOKEN, temp_dir=tmp_path_factory.mktemp("server-tmp"))
    with LiveServer(create_app(Segmenter.load("default", device="cpu"), settings)) as server:
        yield server


def _xray():
    row = next(csv.DictReader(open(TESTDATA / "qata_samples" / "samples.csv", encoding="utf-8")))
    return TESTDATA / "qata_samples" / "Images" / row["Image"].removeprefix("mask_")


@pytest.mark.parametrize("name", ["totalseg-ct.nii.gz", "spinalcord-t2.nii.gz", "totalseg-ct-slice15.png", "xray"])
def test_the_response_reports_inputs_unlike_the_training_images(default_server, name, tmp_path):
    source = _xray() if name == "xray" else TESTDATA / "volumes" / name
    if source.suffix == ".png":  # the server takes NRRD and NIfTI: the same 8-bit pixels as a 2D NRRD
        sitk.WriteImage(sitk.ReadImage(str(source)), str(tmp_path / "image.nrrd"))
        source = tmp_path / "image.nrrd"
    with open(source, "rb") as file:
        answer = httpx.post(f"{default_server.url}/v1/segment", headers=auth(), data={"text": [PROMPT]},
                            files={"volume": (source.name, file)}, timeout=120)
    assert answer.status_code == 200, answer.text
    summary, labelmap = read_answer(answer, tmp_path)
    assert labelmap.GetSize() == sitk.ReadImage(str(source)).GetSize(), "segmented all the same"
    domain = summary["domain"]
    assert domain["checked"] is True
    if name == "xray":
        assert domain["warning"] is None and not any(w.startswith(PREFIX) for w in summary["warnings"])
    else:
        assert domain["warning"].startswith(PREFIX) and domain["warning"] in summary["warnings"]
        assert domain["unlike"] > 0
