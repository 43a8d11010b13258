"""Clicks in segment requests (issue 17): parsed, placed on the right slice, refused when malformed.

Real volumes (Testing/data/volumes), the bundled default model with its fine-tuned click injection
(conftest.click_model_dir), the tiny test model as one without click inputs, and a real worker
process for the protocol.
"""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from tevia.inference.segmenter import Segmenter
from tevia.inference.pipeline import FeatureCache, SegmentOptions, segment_volume
from tevia.volume.clicks import parse_clicks
from tevia.volume.errors import BadInputError
from tevia.volume.io import read_input
from volume_fixtures import VOLUMES, volumes_dir  # noqa: F401 (a pytest fixture)
from worker_process import WorkerProcess, worker  # noqa: F401 (worker: a pytest fixture)

PROMPTS = ["lung", "Unilateral pulmonary infection, one infected area, lower left lung."]

MALFORMED = [
    ({"ras": [1, 2, 3], "positive": True}, "one list of clicks per prompt"),
    ([[{"ras": [1, 2, 3], "positive": True}]], "one list of clicks per prompt"),
    ([{"ras": [1, 2, 3]}, []], "clicks[0] must be a list"),
    ([[{"ras": [1, 2, 3]}], []], "clicks[0][0] must be"),
    ([[{"ras": [1, 2], "positive": True}], []], "clicks[0][0].ras must be a list of 3 finite numbers"),
    ([[], [{"ras": [1, "a", 3], "positive": True}]], "clicks[1][0].ras must be a list of 3 finite numbers"),
    ([[], [{"pixel": [1, 2, 3], "positive": False}]], "clicks[1][0].pixel must be a list of 2 finite numbers"),
    ([[{"ras": [1, 2, 3], "positive": 1}], []], "clicks[0][0].positive must be true or false"),
    ([[{"ras": [1, 2, 3], "pixel": [1, 2], "positive": True}], []], "clicks[0][0] must be"),
    ([[{"ras": [1e999, 2, 3], "positive": True}], []], "finite numbers"),
]


@pytest.mark.parametrize(("raw", "message"), MALFORMED)
def test_malformed_clicks_are_refused_with_what_is_wrong(raw, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_clicks(raw, len(PROMPTS))


@pytest.fixture(scope="module")
def clicker(click_model_dir) -> Segmenter:
    return Segmenter.load(click_model_dir, device="cpu")


def _ras(image: sitk.Image, ijk) -> list[float]:
    x, y, *z = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk])
    return [-x, -y, z[0] if z else 0.0]


def test_a_click_refines_only_its_slice_of_a_volume_under_a_permuted_direction_matrix(clicker):
    """The same RAS click on the CT and on the CT stored with its axes permuted (a non-identity,
    non-diagonal direction matrix) refines the same anatomical slice, with the same labels."""
    ct = read_input(str(VOLUMES / "totalseg-ct.nii.gz"))[0]
    permuted = sitk.PermuteAxes(ct, [2, 0, 1])
    assert not np.allclose(np.abs(np.asarray(permuted.GetDirection()).reshape(3, 3)), np.eye(3))
    clicks = [[{"ras": _ras(ct, (60, 50, 12)), "positive": True}], []]
    results = [segment_volume(clicker, image, PROMPTS, clicks=parse_clicks(clicks, 2)) for image in (ct, permuted)]
    assert results[0].refined_slices == [12] and results[0].refined_axis == 2
    assert results[1].refined_slices == [12] and results[1].refined_axis == 0  # the CT's K is I after [2, 0, 1]
    labels = sitk.GetArrayFromImage(results[0].labelmap)
    assert labels[12].any() and not np.delete(labels, 12, axis=0).any()
    back = sitk.Resample(results[1].labelmap, ct, sitk.Transform(), sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)


def test_a_click_on_a_2d_image_by_pixel_equals_the_same_click_in_ras(clicker):
    image = read_input(str(VOLUMES / "totalseg-ct-slice15.png"))[0]
    by_pixel = segment_volume(clicker, image, PROMPTS, clicks=parse_clicks([[{"pixel": [40, 60], "positive": True}], []], 2))
    ras = _ras(image, (40, 60))
    by_ras = segment_volume(clicker, image, PROMPTS, clicks=parse_clicks([[{"ras": ras, "positive": True}], []], 2))
    assert by_pixel.refined_slices == by_ras.refined_slices == [0]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(by_pixel.labelmap), sitk.GetArrayFromImage(by_ras.labelmap))


def test_no_clicks_and_reused_features_give_the_text_only_labels(clicker):
    """Empty click lists segment as text only; a click reuses the cached features (no encoder)."""
    image = read_input(str(VOLUMES / "totalseg-ct-slice15.png"))[0]
    cache = FeatureCache(2**30)
    text_only = segment_volume(clicker, image, PROMPTS, feature_cache=cache)
    empty = segment_volume(clicker, image, PROMPTS, clicks=parse_clicks([[], []], 2), feature_cache=cache)
    assert empty.refined_slices is None
    np.testing.assert_array_equal(sitk.GetArrayFromImage(empty.labelmap), sitk.GetArrayFromImage(text_only.labelmap))
    clicked = segment_volume(clicker, image, PROMPTS, feature_cache=cache,
                             clicks=parse_clicks([[{"pixel": [40, 60], "positive": True}], []], 2))
    assert clicked.timings["cache_hit"] == 1.0 and clicked.timings["encode_images"] == 0.0


def test_clicks_outside_the_image_or_on_a_text_only_model_are_refused(clicker, tiny_model_dir):
    ct = read_input(str(VOLUMES / "totalseg-ct.nii.gz"))[0]
    outside = parse_clicks([[{"ras": _ras(ct, (60, 50, 45)), "positive": True}], []], 2)
    with pytest.raises(BadInputError, match=r"clicks\[0\]\[0\] .* lies outside the image"):
        segment_volume(clicker, ct, PROMPTS, clicks=outside)
    with pytest.raises(BadInputError, match="'pixel' click needs a 2D image"):
        segment_volume(clicker, ct, PROMPTS, clicks=parse_clicks([[{"pixel": [1, 2], "positive": True}], []], 2))
    with pytest.raises(BadInputError, match="takes no clicks"):
        segment_volume(Segmenter.load(tiny_model_dir, device="cpu"), ct, PROMPTS,
                       clicks=parse_clicks([[{"pixel": [1, 2], "positive": True}], []], 2))


def test_the_worker_refuses_malformed_clicks_and_answers_a_click(worker, click_model_dir, tmp_path):  # noqa: F811
    source = str(VOLUMES / "totalseg-ct-slice15.png")
    base = {"type": "segment", "input": source, "prompts": PROMPTS, "output": str(tmp_path / "o.nii.gz")}
    for i, (raw, message) in enumerate(MALFORMED[:4]):
        events = worker.request({**base, "id": f"bad{i}", "clicks": raw})
        assert events[-1]["event"] == "error" and events[-1]["code"] == "bad_request"
        assert "bad clicks" in events[-1]["message"] and message in events[-1]["message"]
    clicks = [[{"pixel": [40, 60], "positive": True}], []]
    events = worker.request({**base, "id": "text-only-model", "clicks": clicks})
    assert events[-1]["code"] == "bad_input" and "takes no clicks" in events[-1]["message"]
    assert not (tmp_path / "o.nii.gz").exists()
    events = worker.request({**base, "id": "click", "clicks": clicks, "model": str(click_model_dir)})
    assert events[-1]["event"] == "result", events[-1]
    assert events[-1]["refined_slices"] == [0] and events[-1]["refined_axis"] == 2
    sidecar = json.loads((tmp_path / "o.tevia.json").read_text())
    assert sidecar["labels"]
