"""BatchLabels (skipping slices, thresholding into the labelmap) equals the plain computation exactly."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tevia.volume.geometry import slice_layout
from tevia.volume.io import read_image
from tevia.inference.transforms import model_input, resize_planes
from tevia.volume.labelling import SKIP_MARGIN, BatchLabels, count_labels, may_exceed
from tevia.volume.preprocess import IntensityScaler
from volume_fixtures import ct_path  # noqa: F401 (pytest fixture)

torch.set_num_threads(1)


def reference_labels(probs_per_prompt, size, threshold):
    """The labelling before slice skipping: resize every slice of every prompt, keep the most probable."""
    batch = len(probs_per_prompt[0])
    best = torch.zeros((batch, *size), dtype=torch.float32)
    label = torch.zeros((batch, *size), dtype=torch.uint8)
    for index, probs in enumerate(probs_per_prompt):
        resized = resize_planes(probs, size)
        wins = (resized > threshold) & (resized > best)
        best = torch.where(wins, resized, best)
        label[wins] = index + 1
    return label.numpy()


def batch_labels(probs_per_prompt, target, threshold):
    labels = BatchLabels(target, threshold, len(probs_per_prompt))
    for index, probs in enumerate(probs_per_prompt):
        labels.add(index, probs)
    labels.finish()
    return labels


PROMPTS = ["Bilateral pulmonary infection, two infected areas", "Unilateral pulmonary infection, lower left lung"]


@pytest.fixture(scope="module")
def ct_probabilities(ct_path):
    """The real CT, and the bundled model's (B, 128, 128) probabilities of its axial and coronal slices
    (the trained model: its probabilities vary from slice to slice, unlike a random one's)."""
    from tevia.inference.segmenter import Segmenter

    segmenter = Segmenter.load("default", device="cpu")
    image, _ = read_image(ct_path)
    array = sitk.GetArrayFromImage(image)
    scaler, _ = IntensityScaler.from_volume(array)
    result = {}
    for axis in ("axial", "coronal"):
        layout = slice_layout(image, axis)
        slices = torch.from_numpy(scaler(layout.view(array)))
        with torch.no_grad():
            features = segmenter.encode_images(model_input(slices, segmenter.spec))
            text = segmenter.encode_text(PROMPTS)
            probs = [segmenter.decode(features, text[i:i + 1]).float().cpu() for i in range(len(PROMPTS))]
        result[axis] = (layout, probs)
    return array.shape, result


@pytest.mark.parametrize("axis", ["axial", "coronal"])
@pytest.mark.parametrize("prompts", [1, 2])
def test_skipping_slices_gives_the_reference_labelmap(ct_probabilities, axis, prompts):
    shape, by_axis = ct_probabilities
    layout, probs = by_axis[axis]
    probs = probs[:prompts]
    # a threshold that half the slices never reach: those are skipped, the others resized
    threshold = float(probs[0].flatten(1).amax(dim=1).median())
    labels = np.zeros(shape, dtype=np.uint8)
    target = layout.view(labels)  # flipped and/or transposed: strided writes
    done = batch_labels(probs, target, threshold)
    expected = reference_labels(probs, tuple(target.shape[1:]), threshold)
    assert 0 < done.resized_slices < prompts * len(target)
    assert np.array_equal(target, expected)
    assert 0 < np.count_nonzero(expected) < expected.size
    assert np.array_equal(count_labels(labels, prompts), np.bincount(labels.ravel(), minlength=prompts + 1))


@pytest.mark.parametrize("size", [(37, 91), (13, 5), (64, 64)], ids=["enlarge", "shrink", "same"])
def test_slices_just_below_the_threshold_are_skipped_exactly(size):
    """Probabilities crowding the threshold from below (the worst case for rounding), some above."""
    generator = torch.Generator().manual_seed(0)
    threshold = 0.3  # not a float32 number: the comparison rounds it as torch does
    offsets = torch.rand((24, 16, 16), generator=generator) * 1e-4
    probs = torch.full((24, 16, 16), threshold) - offsets
    probs[3, 5, 7] = threshold * (1 - SKIP_MARGIN / 2)  # kept: within the margin
    probs[8] = threshold  # constant at the threshold: resizing must not make it cross
    probs[11, 2, 2] = 0.31
    probs[17] = torch.rand((16, 16), generator=generator)
    probs[20, 0, 0] = float("nan")
    labels = np.zeros((24, *size), dtype=np.uint8)
    done = batch_labels([probs], labels, threshold)
    assert done.resized_slices < 24 and may_exceed(probs, threshold)[[3, 8, 11, 17]].all()
    assert np.array_equal(labels, reference_labels([probs], size, threshold))
    assert labels[11].any() and labels[17].any()
    two = np.zeros((24, *size), dtype=np.uint8)
    batch_labels([probs, probs.flip(0)], two, threshold)
    assert np.array_equal(two, reference_labels([probs, probs.flip(0)], size, threshold))
