"""More than one training set: a site's corrected slices beside a spread subset of the slices a
model was first trained on (data.extra_train, data.train_every), as configs/ct-covid-lung-site.yaml
mixes them."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from conftest import REPO, TESTDATA, shared_path
from tevia.commands.cli import main as cli_main
from tevia.config import ExtraTrainSet, load_config
from tevia.training.train import _datasets, _texts

SMOKE = REPO / "configs" / "smoke.yaml"
CT_ROWS = 3


def _ct_set(folder, convention: str):
    """The first CT_ROWS covid-ct val slices as a set with a Convention column, like the Slicer export."""
    source = shared_path("covid-ct-slices")
    for sub in ("Images", "GTs"):
        (folder / "Train" / sub).mkdir(parents=True)
    with open(source / "val.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:CT_ROWS]
    with open(folder / "train.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["Image", "Description", "Convention"])
        for row in rows:
            shutil.copy2(source / "Val" / "GTs" / row["Image"], folder / "Train" / "GTs")
            shutil.copy2(source / "Val" / "Images" / row["Image"].removeprefix("mask_"), folder / "Train" / "Images")
            writer.writerow([row["Image"], row["Description"], convention])
    return [row["Description"] for row in rows]


def test_extra_sets_join_the_training_images_repeated_and_in_their_convention(tmp_path):
    ct_texts = _ct_set(tmp_path / "site", "patient")
    config = load_config(SMOKE, [f"data.root={TESTDATA / 'qata_samples'}", "data.train_every=3",
                                 f"data.extra_train=[{{root: {tmp_path / 'site'}, repeat: 2}}]"])
    assert config.data.extra_train == [ExtraTrainSet(str(tmp_path / "site"), "train", 2)]
    train, val = _datasets(config)
    samples = len(val)  # the smoke config validates on its training split
    assert len(train) == len(range(0, samples, 3)) + 2 * CT_ROWS
    texts = _texts(train)
    assert texts[:len(range(0, samples, 3))] == _texts(val)[::3], "every third row, from all of the split"
    mirrored = [t.lower().replace("left", "@").replace("right", "left").replace("@", "right") for t in ct_texts]
    assert [t.lower() for t in texts[-CT_ROWS:]] == mirrored, "the extra set's own (patient) convention is converted"


def test_bad_extra_entries_are_refused_by_name():
    with pytest.raises(ValueError, match="extra_train entry must be a mapping with 'root'"):
        load_config(SMOKE, ["data.extra_train=[{split: train}]"])
    with pytest.raises(ValueError, match="extra_train entry.*'folder'"):
        load_config(SMOKE, ["data.extra_train=[{root: x, folder: y}]"])
    with pytest.raises(ValueError, match="repeat must be an integer >= 1, got 0"):
        load_config(SMOKE, ["data.extra_train=[{root: x, repeat: 0}]"])
    with pytest.raises(ValueError, match="data.train_every must be an integer >= 1, got 0"):
        load_config(SMOKE, ["data.train_every=0"])


def test_training_with_an_extra_set_describes_it_in_the_model(tmp_path):
    _ct_set(tmp_path / "site", "image")
    out = tmp_path / "run"
    assert cli_main(["train", "--config", str(SMOKE), f"data.root={TESTDATA / 'qata_samples'}",
                     f"data.extra_train=[{{root: {tmp_path / 'site'}}}]", "data.train_every=2",
                     f"train.out_dir={out}", "train.max_epochs=2"]) == 0
    info = json.loads((out / "model" / "model.json").read_text())
    samples = len(list(csv.DictReader(open(TESTDATA / "qata_samples" / "samples.csv", encoding="utf-8"))))
    assert info["training_data"]["extra_train"] == [{"root": str(tmp_path / "site"), "split": "train", "repeat": 1}]
    calibration = info["domain"]["calibration"]
    assert calibration["train_images"] == len(range(0, samples, 2)) + CT_ROWS, \
        "the domain profile describes the images trained on: every second sample and the extra set's"
    assert calibration["extra_train"] == [f"{tmp_path / 'site'}/train"]
