"""Left-right flips in training (train.horizontal_flip): the mirrored image's description has its
side words swapped, so "lower left lung" still names where the mask is."""

import logging
import re

import pytest
import torch
import yaml

from conftest import REPO, TESTDATA
from tevia.training.augment import flip_sides, mirrored_text
from tevia.commands.cli import main as cli_main

torch.set_num_threads(1)


def test_mirrored_text_swaps_the_side_words():
    assert mirrored_text("Unilateral pulmonary infection, one infected area, lower left lung.").endswith(
        "lower right lung.")
    both = mirrored_text("two infected areas, all left lung and lower right lung.")
    assert "all right lung" in both and "lower left lung" in both


def test_a_flipped_image_takes_its_mask_and_the_mirrored_description_along():
    image = torch.zeros(64, 1, 8, 8)
    image[:, :, 5:8, 0:2] = 1.0  # lower left of the image
    mask = image.clone()
    texts = ["Unilateral pulmonary infection, one infected area, lower left lung."] * 64
    flipped, flipped_mask, new_texts = flip_sides(image, mask, texts, torch.Generator().manual_seed(0))
    assert torch.equal(flipped, flipped_mask), "the mask goes with its image"
    moved = flipped[:, 0, 5:8, 6:8].sum((1, 2)) == 6
    assert 16 < int(moved.sum()) < 48, "about half"
    for was_moved, text in zip(moved.tolist(), new_texts):
        assert text.endswith("lower right lung." if was_moved else "lower left lung.")
    assert flipped[:, 0, :5].sum() == 0, "up and down stay"
    with pytest.raises(ValueError, match="one description per image"):
        flip_sides(image, mask, texts[:3])


def _embedded(caplog) -> int:
    counts = [int(m.group(1)) for m in (re.search(r"embedded (\d+) distinct descriptions", r.getMessage())
                                        for r in caplog.records) if m]
    assert len(counts) == 1
    return counts[0]


def test_training_with_side_flips_embeds_the_mirrored_descriptions(tmp_path, caplog):
    common = ["train", "--config", str(REPO / "configs" / "smoke.yaml"), f"data.root={TESTDATA / 'qata_samples'}",
              "train.max_epochs=2", "train.limit_train_batches=2", "train.early_stopping_patience=0", "train.checkpoint_monitor=last"]
    with caplog.at_level(logging.INFO, logger="tevia.training.train"):
        assert cli_main([*common, f"train.out_dir={tmp_path / 'flips'}", "train.horizontal_flip=true"]) == 0
    with_flips = _embedded(caplog)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tevia.training.train"):
        assert cli_main([*common, f"train.out_dir={tmp_path / 'plain'}"]) == 0
    plain = _embedded(caplog)
    assert with_flips > plain, "the descriptions of mirrored images are in the text table"
    assert yaml.safe_load((tmp_path / "flips" / "config.yaml").read_text())["train"]["horizontal_flip"] is True
