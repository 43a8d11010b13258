"""Corrective clicks through POST /v1/segment (issue 17): a real server on 127.0.0.1 serving the
bundled default model, which carries its fine-tuned click injection (conftest.click_model_dir), real chest X-rays
(Testing/data/qata_samples, uploaded as 2D NRRD) and a real CT crop.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from conftest import TESTDATA
from server_helpers import (LiveServer, auth, click_server, read_answer, real_volume,  # noqa: F401
                            segmenter, serve)
from tevia.training.click_simulation import next_click
from tevia.inference.segmenter import Segmenter
from tevia.inference.segment_options import SegmentOptions
from tevia.inference.pipeline import segment_volume

SAMPLES = TESTDATA / "qata_samples"
OPTIONS = {"convention": "image"}  # the X-ray prompts name the image's sides, as the model was trained


def _samples(count: int) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(image uint8 (H, W), ground truth bool (H, W), description) of the first committed samples."""
    with open(SAMPLES / "samples.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))[:count]
    return [(np.asarray(Image.open(SAMPLES / "Images" / row["Image"].removeprefix("mask_")).convert("L")),
             np.asarray(Image.open(SAMPLES / "GTs" / row["Image"]).convert("L")) > 127, row["Description"])
            for row in rows]


def _nrrd(array: np.ndarray, path: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), useCompression=True)
    return path


def _segment(server: LiveServer, path: Path, prompts: list[str], clicks=None, options=OPTIONS) -> httpx.Response:
    data = {"text": prompts, "options": json.dumps(options)}
    if clicks is not None:
        data["clicks"] = clicks if isinstance(clicks, str) else json.dumps(clicks)
    with open(path, "rb") as file:
        return httpx.post(f"{server.url}/v1/segment", headers=auth(), data=data,
                          files={"volume": ("volume.nrrd", file)}, timeout=120)


def _mask(server: LiveServer, path: Path, prompts: list[str], folder: Path, clicks=None) -> tuple[dict, np.ndarray]:
    answer = _segment(server, path, prompts, clicks)
    assert answer.status_code == 200, answer.text
    payload, labelmap = read_answer(answer, folder)
    return payload, sitk.GetArrayFromImage(labelmap)


def _pixel(click) -> dict:
    return {"pixel": [click.col, click.row], "positive": click.positive}


def test_the_info_says_whether_the_model_takes_clicks(click_server):
    info = httpx.get(f"{click_server.url}/v1/info", headers=auth()).json()
    assert info["click_inputs"] is True


def test_a_positive_click_in_a_missed_region_grows_the_mask_there_from_the_cached_features(click_server, tmp_path):
    """On 6 real X-rays, a positive click at the centre of the largest missed region: the answer
    refines the one slice of the image, from the features of the text-only request (no encoder
    pass), and the mask grows into the missed region on all but at most one."""
    grown = tried = 0
    for index, (image, truth, description) in enumerate(_samples(6)):
        path = _nrrd(image, tmp_path / f"xray{index}.nrrd")
        before_payload, before = _mask(click_server, path, [description], tmp_path)
        assert "refined_slices" not in before_payload
        click = next_click(before.astype(bool) & truth, truth)  # only the misses: a positive click
        if click is None:
            continue
        assert click.positive
        payload, after = _mask(click_server, path, [description], tmp_path, [[_pixel(click)]])
        assert payload["refined_slices"] == [0] and payload["refined_axis"] == 2
        assert payload["timings"]["cache_hit"] == 1.0 and payload["timings"]["encode_images"] == 0.0
        missed = truth & (before == 0)
        tried += 1
        grown += int((after[missed] == 1).sum() > 0 and (after == 1).sum() > (before == 1).sum())
    assert tried >= 4 and grown >= tried - 1, (grown, tried)


def test_a_negative_click_in_a_false_region_removes_it(click_server, tmp_path):
    # A prompt for the other lung makes the model mark a region that is not the target.
    image, truth, description = _samples(1)[0]
    assert "left" in description
    wrong = description.replace("left", "right")
    path = _nrrd(image, tmp_path / "xray.nrrd")
    _, before = _mask(click_server, path, [wrong], tmp_path)
    click = next_click(before.astype(bool) | truth, truth)  # only the false regions: a negative click
    assert click is not None and not click.positive
    _, after = _mask(click_server, path, [wrong], tmp_path, [[_pixel(click)]])
    false = (before == 1) & ~truth
    assert after[int(click.row), int(click.col)] == 0, "the clicked pixel must leave the mask"
    assert (after[false] == 1).sum() < false.sum()


def test_no_clicks_reproduce_the_text_only_output(click_server, text_only_default_dir, tmp_path):
    """Without clicks, and with empty click lists, the click model's server answers exactly what
    the default's weights in a network without click inputs segment."""
    image, _, description = _samples(2)[1]
    path = _nrrd(image, tmp_path / "xray.nrrd")
    prompts = [description, "lung"]
    text_only = segment_volume(Segmenter.load(text_only_default_dir, device="cpu"), sitk.ReadImage(str(path)),
                               prompts, SegmentOptions.from_dict(OPTIONS))
    expected = sitk.GetArrayFromImage(text_only.labelmap)
    assert (expected == 1).any()
    without_payload, without = _mask(click_server, path, prompts, tmp_path)
    empty_payload, empty = _mask(click_server, path, prompts, tmp_path, [[], []])
    np.testing.assert_array_equal(without, expected)
    np.testing.assert_array_equal(empty, expected)
    assert "refined_slices" not in without_payload and "refined_slices" not in empty_payload


def test_a_click_on_a_volume_refines_its_slice_only(click_server, tmp_path):
    ct = sitk.ReadImage(str(real_volume("totalseg-ct.nii.gz")))
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(ct, str(path), useCompression=True)
    x, y, z = ct.TransformContinuousIndexToPhysicalPoint((60.0, 50.0, 12.0))
    clicks = [[{"ras": [-x, -y, z], "positive": True}]]
    payload, labels = _mask(click_server, path, ["lung"], tmp_path, clicks)
    assert payload["refined_slices"] == [12] and payload["refined_axis"] == 2
    assert labels.shape == ct.GetSize()[::-1] and labels[12].any() and not np.delete(labels, 12, axis=0).any()


MALFORMED = [
    ("[[{\"ras\": [1, 2, 3], \"positive\": true}", "the `clicks` field is not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "the `clicks` field"),
    ({"ras": [1, 2, 3], "positive": True}, "bad `clicks`: 'clicks' must be a list with one list of clicks per prompt (1)"),
    ([[{"ras": [1, 2, 3], "positive": True}], []], "one list of clicks per prompt (1)"),
    ([[{"ras": [1, 2], "positive": True}]], "clicks[0][0].ras must be a list of 3 finite numbers"),
    ([[{"pixel": [1, "a"], "positive": True}]], "clicks[0][0].pixel must be a list of 2 finite numbers"),
    ([[{"ras": [1, 2, 3], "positive": "yes"}]], "clicks[0][0].positive must be true or false"),
    ([[{"ras": [1, 2, 3]}]], "clicks[0][0] must be"),
    ([[{"ras": [1, 2, 3], "positive": True}] * 1001], "at most 1000 clicks"),
]


@pytest.mark.parametrize(("clicks", "message"), MALFORMED)
def test_malformed_clicks_are_refused_with_what_is_wrong(click_server, tmp_path, clicks, message):
    path = _nrrd(_samples(1)[0][0], tmp_path / "xray.nrrd")
    answer = _segment(click_server, path, ["lung"], clicks)
    assert answer.status_code == 422, answer.text
    assert message in answer.json()["detail"]


def test_clicks_that_cannot_be_placed_are_refused(click_server, serve, tmp_path):
    """A pixel click on a 3D volume, a point outside the image, and any click on a text-only model."""
    ct = tmp_path / "ct.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(real_volume("totalseg-ct.nii.gz"))), str(ct), useCompression=True)
    answer = _segment(click_server, ct, ["lung"], [[{"pixel": [1, 2], "positive": True}]])
    assert answer.status_code == 422 and "'pixel' click needs a 2D image" in answer.json()["detail"]
    xray = _nrrd(_samples(1)[0][0], tmp_path / "xray.nrrd")
    answer = _segment(click_server, xray, ["lung"], [[{"pixel": [224, 10], "positive": True}]])
    assert answer.status_code == 422 and "clicks[0][0] [224.0, 10.0] lies outside the image" in answer.json()["detail"]
    answer = _segment(serve(), xray, ["lung"], [[{"pixel": [20, 10], "positive": True}]])
    assert answer.status_code == 422 and "takes no clicks" in answer.json()["detail"]
