"""tevia.inference.transforms: one resize and one text rule for training, evaluation and the volume pipeline.

On the committed QaTa samples with the bundled model: the images the training data set gives at
the model's size are exactly those evaluation and the volume pipeline feed the model, the masks
`tevia evaluate` measures are the volume pipeline's voxel for voxel, and the text table training
embeds holds what inference encodes for the same descriptions."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import TESTDATA
from tevia.training.data.dataset import CSVSegmentationDataset
from tevia.inference.text_cache import text_table
from tevia.commands.evaluate import predict_masks
from tevia.inference.segmenter import Segmenter
from tevia.inference.spec import ModelSpec
from tevia.prompts import prepare_prompt
from tevia.inference.transforms import model_input, model_text, resize_planes
from tevia.volume.io import read_image
from tevia.inference.pipeline import SegmentOptions, segment_volume

torch.set_num_threads(1)
SAMPLES = TESTDATA / "qata_samples"


@pytest.fixture(scope="module")
def default_model() -> Segmenter:
    return Segmenter.load("default", device="cpu")


def test_training_evaluation_and_volume_paths_give_identical_masks(default_model):
    spec = default_model.spec
    native = CSVSegmentationDataset(SAMPLES, "samples", channels=spec.in_channels)  # 224 x 224, as evaluated
    assert tuple(spec.image_size) != native.image_size  # every path resizes both ways
    images = torch.stack([native[i]["image"] for i in range(len(native))])
    fed = model_input(images, spec)
    for cache in (False, True):
        training = CSVSegmentationDataset(SAMPLES, "samples", image_size=spec.image_size,
                                          channels=spec.in_channels, cache=cache)
        assert torch.equal(torch.stack([training[i]["image"][0] for i in range(len(training))]), fed)
    evaluated = predict_masks(default_model, images, native.texts, spec.threshold)
    options = SegmentOptions(threshold=spec.threshold, convention=spec.side_convention)
    for index, path in enumerate(native.image_paths):
        result = segment_volume(default_model, read_image(path)[0], [native.texts[index]], options)
        assert result.prompts[0]["text"] == model_text(native.texts[index])
        volume = sitk.GetArrayViewFromImage(result.labelmap) == 1
        assert np.array_equal(volume, evaluated[index]), f"{native.names[index]}: {np.sum(volume != evaluated[index])} pixels differ"
    assert evaluated.any(axis=(1, 2)).sum() >= 18  # real masks, not empty ones that agree trivially


def test_training_embeds_each_description_as_inference_encodes_it(default_model):
    texts = ["Bilat pulmonary infection, RLL and LLL", "  ", "Unilateral pulmonary infection, lower left lung.",
             "Bilat pulmonary infection, RLL and LLL"]
    table, index = text_table(default_model.text_encoder, texts)
    assert sorted(index) == sorted(set(texts)) and table.shape[0] == 3 and not table.requires_grad
    assert model_text("  ") == "" and model_text(texts[0]) == "bilateral pulmonary infection, lower right lung and lower left lung"
    for text in set(texts):
        if text.strip():  # the volume pipeline's prompt text is training's (a blank one is refused there)
            assert prepare_prompt(text, default_model.spec, default_model.spec.side_convention).text == model_text(text)
        expected = default_model.encode_text([model_text(text)])[0].cpu()
        torch.testing.assert_close(table[index[text]], expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="at least one description"):
        text_table(default_model.text_encoder, [])


def test_resize_planes_keeps_layouts_ranges_and_antialiases_shrinking():
    planes = torch.rand((2, 3, 40, 60), generator=torch.Generator().manual_seed(0))
    assert resize_planes(planes, (40, 60)) is planes
    for size in ((20, 30), (70, 90), (30, 90)):
        resized = resize_planes(planes, size)
        assert resized.shape == (2, 3, *size)
        assert torch.equal(resized[1], resize_planes(planes[1], size))  # (C, H, W), (B, C, H, W): plane by plane
        assert torch.equal(resized[1, 2], resize_planes(planes[1, 2], size))
        assert planes.min() <= resized.min() and resized.max() <= planes.max()  # convex: may_exceed relies on it
    checkerboard = (torch.arange(64)[:, None] + torch.arange(64)) % 2 == 0
    shrunk = resize_planes(checkerboard.float()[None], (24, 24))
    assert float((shrunk - 0.5).abs().max()) < 0.05  # averaged; plain bilinear sampling aliases far from 0.5
    with pytest.raises(ValueError, match="size must be"):
        resize_planes(planes, (0, 5))


def test_model_input_gives_the_encoder_layout_and_refuses_other_channels():
    gray = ModelSpec("m", "0", (32, 64), 1)
    assert model_input(torch.rand(2, 1, 50, 50), gray).shape == (2, 32, 64)
    assert model_input(torch.rand(2, 50, 50), gray).shape == (2, 32, 64)  # volume slices
    assert model_input(torch.rand(2, 3, 50, 50), ModelSpec("m", "0", (32, 64), 3)).shape == (2, 3, 32, 64)
    with pytest.raises(ValueError, match="3-channel images but the model takes 1; build the data set with channels=1"):
        model_input(torch.rand(2, 3, 32, 64), gray)
    with pytest.raises(ValueError, match=r"got shape \(32, 64\)"):
        model_input(torch.rand(32, 64), gray)
