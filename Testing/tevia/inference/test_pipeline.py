"""segment_volume with a real (tiny, random-weight) model on real volumes."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tevia.inference.transforms import model_input
from tevia.inference import pipeline
from tevia.inference.pipeline import Cancelled, FeatureCache, SegmentOptions, regroup, segment_volume
from tevia.volume.errors import BadInputError
from tevia.volume.geometry import as_3d, same_geometry, slice_layout
from tevia.volume.io import read_image
from tevia.volume.preprocess import IntensityScaler
from conftest import GpuOutOfMemory
from volume_fixtures import committed_input, shared_input, ct_path, volumes_dir  # noqa: F401 (pytest fixtures)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def segmenter(tiny_model_dir):
    from tevia.inference.segmenter import Segmenter

    return Segmenter.load(tiny_model_dir, device="cpu")


def _threshold(segmenter, image, prompt="liver"):
    """A threshold near the median probability of a middle slice, so masks are neither empty nor full."""
    volume = as_3d(image)
    view = slice_layout(volume, "axial").view(sitk.GetArrayViewFromImage(volume))
    scaler, _ = IntensityScaler.from_volume(sitk.GetArrayViewFromImage(volume))
    plane = model_input(torch.from_numpy(scaler(view[len(view) // 2: len(view) // 2 + 1])), segmenter.spec)
    return float(np.median(segmenter.predict(plane.numpy(), prompt)))


def _disagreement(a, b):
    """Fraction of voxels where two masks differ. The random tiny model's probabilities all lie within
    about 0.002 of each other, so batch-size-dependent float rounding flips a few voxels at the threshold."""
    return float(np.mean(np.asarray(a) != np.asarray(b)))


def _check_geometry(segmenter, path, prompts=("liver", "left kidney")):
    image, _ = read_image(path)
    result = segment_volume(segmenter, image, list(prompts),
                            SegmentOptions(threshold=_threshold(segmenter, image)))
    assert same_geometry(result.labelmap, image) and result.labelmap.GetPixelID() == sitk.sitkUInt8
    values = sitk.GetArrayViewFromImage(result.labelmap)
    assert set(np.unique(values)) <= set(range(len(prompts) + 1))
    assert sum(result.voxels.values()) == np.count_nonzero(values) > 0
    return result


def test_geometry_committed(segmenter, committed_input):
    _check_geometry(segmenter, committed_input)


def test_geometry_shared(segmenter, shared_input):
    _check_geometry(segmenter, shared_input, prompts=("liver",))


@pytest.fixture(scope="module")
def ct(ct_path):
    return read_image(ct_path)[0]


def test_multi_prompt_labels_partition_the_single_prompt_masks(segmenter, ct):
    threshold = _threshold(segmenter, ct)
    options = SegmentOptions(threshold=threshold)
    both = segment_volume(segmenter, ct, ["liver", "spleen"], options)
    liver = sitk.GetArrayFromImage(segment_volume(segmenter, ct, ["liver"], options).labelmap) == 1
    spleen = sitk.GetArrayFromImage(segment_volume(segmenter, ct, ["spleen"], options).labelmap) == 1
    labels = sitk.GetArrayFromImage(both.labelmap)
    assert both.labels == {1: "liver", 2: "spleen"}
    assert ((labels == 1) & ~liver).mean() < 0.001 and ((labels == 2) & ~spleen).mean() < 0.001
    assert _disagreement(labels > 0, liver | spleen) < 0.001
    assert both.voxels == {"liver": int((labels == 1).sum()), "spleen": int((labels == 2).sum())}
    assert set(both.timings) >= {"read", "encode_images", "decode", "postprocess", "total"}
    lower = segment_volume(segmenter, ct, ["liver"], SegmentOptions(threshold=threshold - 1e-4))
    assert lower.voxels["liver"] >= liver.sum()


def test_feature_cache_skips_the_encoder_and_gives_the_same_masks(segmenter, ct):
    cache = FeatureCache()
    options = SegmentOptions(threshold=_threshold(segmenter, ct))
    first = segment_volume(segmenter, ct, ["liver"], options, feature_cache=cache)
    second = segment_volume(segmenter, ct, ["liver"], options, feature_cache=cache)
    assert first.timings["cache_hit"] == 0.0 and second.timings["cache_hit"] == 1.0
    assert second.timings["encode_images"] == 0.0 < first.timings["encode_images"]
    assert _disagreement(sitk.GetArrayViewFromImage(first.labelmap), sitk.GetArrayViewFromImage(second.labelmap)) < 0.001
    other_axis = segment_volume(segmenter, ct, ["liver"], SegmentOptions(slice_axis="coronal"), feature_cache=cache)
    assert other_axis.timings["cache_hit"] == 0.0 and len(cache) == 2 and cache.nbytes > 0
    small = FeatureCache(max_bytes=1000)
    segment_volume(segmenter, ct, ["liver"], options, feature_cache=small)
    assert len(small) == 0


class _DecodeSizes:
    """A loaded Segmenter that records the batch size of every decode."""

    def __init__(self, segmenter) -> None:
        self.segmenter, self.sizes = segmenter, []

    def __getattr__(self, name):
        return getattr(self.segmenter, name)

    def decode(self, features, text, clicks=None):
        self.sizes.append(len(features))
        return self.segmenter.decode(features, text, clicks)


def test_a_cached_volume_decodes_in_full_batches_whatever_the_first_run_did(segmenter, ct, monkeypatch):
    """The run that fills the cache took one slice per step (every step slower than STEP_SECONDS);
    a later prompt still decodes batch_size slices at a time, with the same masks."""
    options = SegmentOptions(threshold=_threshold(segmenter, ct), batch_size=8)
    cache, recorder = FeatureCache(), _DecodeSizes(segmenter)
    monkeypatch.setattr(pipeline, "STEP_SECONDS", 1e-9)
    first = segment_volume(recorder, ct, ["liver"], options, feature_cache=cache)
    assert max(recorder.sizes) <= 2  # the filling run's steps stayed small
    monkeypatch.undo()
    recorder.sizes.clear()
    second = segment_volume(recorder, ct, ["liver"], options, feature_cache=cache)
    assert second.timings["cache_hit"] == 1.0
    slices = ct.GetSize()[2]
    # full batches of 8, but for the sizer's first step of 2 (and the 6 left of that chunk) and the end
    assert sum(recorder.sizes) == slices and len(recorder.sizes) <= -(-slices // 8) + 1
    assert recorder.sizes[2:-1] == [8] * (len(recorder.sizes) - 3)
    assert _disagreement(sitk.GetArrayViewFromImage(first.labelmap), sitk.GetArrayViewFromImage(second.labelmap)) < 0.001


def test_regroup_joins_neighbours_up_to_the_size_and_keeps_the_order():
    from tevia.inference.segmenter import ImageFeatures

    chunks = [ImageFeatures([torch.arange(start, start + n, dtype=torch.float32)[:, None]])
              for start, n in ((0, 2), (2, 3), (5, 16), (21, 1), (22, 1), (23, 5))]
    grouped = regroup(chunks, 8)
    assert [len(c) for c in grouped] == [5, 16, 7]
    assert torch.equal(torch.cat([c.maps[0] for c in grouped])[:, 0], torch.arange(28, dtype=torch.float32))
    assert grouped[1] is chunks[2]  # a chunk at least the size is kept, not copied


def test_cancel_stops_between_steps(segmenter, ct):
    seen = []
    with pytest.raises(Cancelled):
        segment_volume(segmenter, ct, ["liver"], progress=lambda stage, done, total: seen.append(done),
                       cancelled=lambda: len(seen) >= 2)
    assert seen[-1] < ct.GetSize()[2]


def test_out_of_memory_halves_the_batch(segmenter, ct):
    options = SegmentOptions(threshold=_threshold(segmenter, ct), batch_size=8)
    expected = segment_volume(segmenter, ct, ["liver"], options)
    limited = GpuOutOfMemory(segmenter, limit=1)
    result = segment_volume(limited, ct, ["liver"], options)
    assert max(limited.sizes) > 1 and limited.sizes[-1] == 1
    assert _disagreement(sitk.GetArrayViewFromImage(result.labelmap), sitk.GetArrayViewFromImage(expected.labelmap)) < 0.001
    with pytest.raises(torch.OutOfMemoryError):
        segment_volume(GpuOutOfMemory(segmenter, limit=0), ct, ["liver"], options)


def test_two_d_image(segmenter, volumes_dir):
    image, _ = read_image(volumes_dir / "totalseg-ct-slice15.png")
    result = segment_volume(segmenter, image, ["Bilateral pulmonary infection, lower left lung"],
                            SegmentOptions(slice_axis="sagittal"))
    assert result.labelmap.GetDimension() == 2 and same_geometry(result.labelmap, image)
    assert result.prompts[0]["mirrored"] is True


@pytest.mark.parametrize("array", [np.full((4, 20, 20), 100, np.int16), np.zeros((1, 1, 1), np.float32)],
                         ids=["constant", "one-voxel"])
def test_constant_and_one_voxel_volumes(segmenter, array):
    image = sitk.GetImageFromArray(array)
    result = segment_volume(segmenter, image, ["liver"])
    assert "constant" in result.warnings[0] and result.voxels == {"liver": 0}
    assert same_geometry(result.labelmap, image)


def test_prompt_errors_and_warnings(segmenter, ct):
    for prompts, match in [(["  "], "empty"), ([], "non-empty"), (["liver", "liver"], "repeats"), ([3], "string")]:
        with pytest.raises(BadInputError, match=match):
            segment_volume(segmenter, ct, prompts)
    long = segment_volume(segmenter, ct, [" ".join(["liver"] * 100), "Leber, linke Niere – ✓ 肝臓"])
    assert any("64" in w or "word" in w for w in long.warnings)
    assert long.labels[2] == "Leber, linke Niere – ✓ 肝臓"


def test_postprocessing_options(segmenter, ct):
    options = SegmentOptions(threshold=_threshold(segmenter, ct), largest_component=True, fill_holes=True)
    labels = sitk.GetArrayFromImage(segment_volume(segmenter, ct, ["liver"], options).labelmap)
    components = sitk.ConnectedComponent(sitk.GetImageFromArray((labels == 1).astype(np.uint8)))
    assert sitk.GetArrayViewFromImage(components).max() == 1
