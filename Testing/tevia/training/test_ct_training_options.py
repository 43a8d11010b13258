"""The training options the CT recipe (configs/ct-covid-lung.yaml) uses: up-down flips of the
images whose description names no vertical position, and keeping the last epoch (no selection
on val, no early stop)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, TESTDATA
from tevia.training.augment import flip_vertically, names_vertical_position
from tevia.commands.cli import main as cli_main
from tevia.inference.segmenter import Segmenter

torch.set_num_threads(1)


@pytest.mark.parametrize("text, vertical", [
    ("Bilateral pulmonary infection, two infected areas, left lung and right lung.", False),
    ("Unilateral pulmonary infection, one infected area, lower left lung.", True),
    ("Unilateral pulmonary infection, one infected area, middle left lung.", True),
    ("Upper right lung.", True),
    ("opacity at the right base", True),
    ("", False),
])
def test_names_vertical_position(text, vertical):
    assert names_vertical_position(text) is vertical


def test_flips_keep_sides_and_spare_descriptions_that_name_a_height():
    image = torch.zeros(64, 1, 8, 8)
    image[:, :, 0:2, 0:3] = 1.0  # top left: a flip moves it to the bottom left
    mask = image.clone()
    texts = ["one infected area, left lung.", "one infected area, lower left lung."] * 32
    flipped_image, flipped_mask = flip_vertically(image, mask, texts, torch.Generator().manual_seed(0))
    assert torch.equal(flipped_image, flipped_mask), "the mask goes with its image"
    moved = flipped_image[:, 0, 6:8, 0:3].sum((1, 2)) == 6
    assert not moved[1::2].any(), "'lower' would become false: never flipped"
    assert 8 < int(moved[0::2].sum()) < 24, "about half of the others"
    assert flipped_image[:, 0, :, 3:].sum() == 0, "left stays left"
    with pytest.raises(ValueError, match="one description per image"):
        flip_vertically(image, mask, texts[:3])


def test_last_epoch_kept_without_selection_and_with_flips(tmp_path):
    out = tmp_path / "run"
    assert cli_main(["train", "--config", str(REPO / "configs" / "smoke.yaml"), f"data.root={TESTDATA / 'qata_samples'}",
                     f"train.out_dir={out}", "train.checkpoint_monitor=last", "train.early_stopping_patience=0",
                     "train.vertical_flip=true", "train.test_time_vertical_flip=true", "train.max_epochs=3"]) == 0
    info = json.loads((out / "model" / "model.json").read_text())
    assert info["test_time_vertical_flip"] is True
    assert info["metrics"]["checkpoint_monitor"] == "last" and info["metrics"]["epochs"] == 3, "no early stop"
    assert 0.0 <= info["metrics"]["val_dice_global"] <= 1.0
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2
    exported = load_file(str(out / "model" / "model.safetensors"))
    name = next(iter(exported))
    torch.testing.assert_close(exported[name], last["state_dict"][f"network.{name}"])


def test_test_time_vertical_flip_averages_each_image_with_its_mirror(tiny_model_dir, tmp_path):
    """A model whose model.json asks for it answers the mean of the image's probabilities and its
    up-down mirror's flipped back, with and without clicks; the features carry both."""
    plain = Segmenter.load(tiny_model_dir, device="cpu", check_domain=False)
    folder = tmp_path / "mirrored"
    shutil.copytree(tiny_model_dir, folder)
    info = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**info, "test_time_vertical_flip": True}))
    mirrored = Segmenter.load(folder, device="cpu", check_domain=False)
    assert mirrored.spec.test_time_vertical_flip and not plain.spec.test_time_vertical_flip
    images = torch.rand(3, *plain.spec.image_size, generator=torch.Generator().manual_seed(0))
    images[:, : images.shape[1] // 2] *= 0.2  # not symmetric up-down
    text = plain.encode_text(["right lung"])
    one = plain.decode(plain.encode_images(images), text)
    other = plain.decode(plain.encode_images(images.flip(-2)), text).flip(-2)
    features = mirrored.encode_images(images)
    assert features.mirrored is not None and features.nbytes == 2 * plain.encode_images(images).nbytes
    assert len(features[1:]) == 2 and features[1:].mirrored is not None
    averaged = mirrored.decode(features, text)
    torch.testing.assert_close(averaged, (one + other) / 2)
    assert (one - other).abs().max() > 1e-4, "the mirror must change something for the test to mean anything"


def test_scanner_augmentation_keeps_sides_moves_mask_with_image_and_varies_the_acquisition():
    from tevia.training.augment import augment
    from tevia.config import TrainConfig

    image = torch.full((64, 1, 64, 64), 0.5)
    mask = torch.zeros(64, 1, 64, 64)
    mask[:, :, 24:40, 8:24] = 1.0  # a lesion in the image's left half
    image[mask.bool()] = 0.9
    out, out_mask = augment("scanner", image, mask, torch.Generator().manual_seed(0))
    assert out.shape == image.shape and out_mask.shape == mask.shape
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}, "the mask stays binary"
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    left, right = out_mask[..., :32].sum((1, 2, 3)), out_mask[..., 32:].sum((1, 2, 3))
    assert bool((left > 5 * right).all()), "never mirrored: the lesion stays in the left half"
    bright = (out > out.flatten(1).median(1).values.view(-1, 1, 1, 1) + 0.05).float()
    overlap = (bright * out_mask).sum() / out_mask.sum()
    assert overlap > 0.8, "the mask follows its image through the geometric transform"
    corners = out[:, 0, :3, :3].flatten(1).mean(1)
    centres = out[:, 0, 30:34, 30:34].flatten(1).mean(1)
    circular = corners < 0.11
    assert 15 < int(circular.sum()) < 50, "about half the images get a dark circular field of view"
    assert float(out_mask[circular][..., :3, :3].sum()) == 0.0, "no mask outside the field of view"
    assert float(centres.std()) > 0.05, "the intensity changes from image to image"
    from tevia.training.augment import AUGMENTATIONS
    assert all(TrainConfig(augmentation=kind).augmentation == kind for kind in AUGMENTATIONS)
    with pytest.raises(ValueError, match="scanner"):
        TrainConfig(augmentation="mixup")
