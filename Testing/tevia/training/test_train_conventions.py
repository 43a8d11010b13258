"""`tevia train` reads descriptions in the model's side convention: a set of unknown convention
is refused, a patient-convention set is converted, a TeViA export says its own convention."""

from __future__ import annotations

import csv
import logging
import shutil

import pytest

from conftest import REPO, TESTDATA
from tevia.commands.cli import main as cli_main
from tevia.config import load_config
from tevia.training.train import _datasets

SMOKE = REPO / "configs" / "smoke.yaml"


@pytest.fixture
def samples(tmp_path):
    """A copy of the committed QaTa samples (image-side descriptions, no Convention column)."""
    root = tmp_path / "samples"
    shutil.copytree(TESTDATA / "qata_samples", root)
    return root


def _with_column(root, value_of_row):
    path = root / "samples.csv"
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["Image", "Description", "Convention"])
        writer.writeheader()
        writer.writerows({**row, "Convention": value_of_row(i)} for i, row in enumerate(rows))
    return [row["Description"] for row in rows]


def _texts(root, convention):
    config = load_config(SMOKE, [f"data.root={root}", f"data.side_convention={convention!r}"])
    return _datasets(config)[0].texts


def test_a_set_of_unknown_convention_is_refused_before_anything_is_written(samples, tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.ERROR):
        code = cli_main(["train", "--config", str(SMOKE), f"data.root={samples}", f"train.out_dir={out}",
                         "data.side_convention=''"])
    assert code == 2
    assert "side convention of" in caplog.text and "is unknown" in caplog.text and "data.side_convention=image" in caplog.text
    assert not out.exists()


def test_a_patient_convention_set_is_read_with_image_sides(samples):
    image = _texts(samples, "image")
    patient = _texts(samples, "patient")
    sided = [i for i, text in enumerate(image) if " left " in f" {text} " and " right " not in f" {text} "]
    assert sided, "the samples must hold one-sided descriptions"
    for i in sided:
        assert patient[i] == image[i].lower().replace("left", "right")
    assert all(p == i.lower() for p, i in zip(patient, image) if "left" not in i and "right" not in i)


def test_the_csv_column_says_the_convention_and_must_agree_with_the_config(samples):
    given = _with_column(samples, lambda i: "patient")
    texts = _texts(samples, "")
    assert texts != given and texts[0].count("left") == given[0].lower().count("right")
    with pytest.raises(ValueError, match="says its descriptions name patient sides"):
        _texts(samples, "image")
    _with_column(samples, lambda i: "image" if i else "patient")
    with pytest.raises(ValueError, match="mixes conventions"):
        _texts(samples, "")
    _with_column(samples, lambda i: "radiological")
    with pytest.raises(ValueError, match="row 2: Convention must be one of"):
        _texts(samples, "")
    with pytest.raises(ValueError, match="data.side_convention must be one of"):
        _texts(samples, "both")


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_names_the_side_convention_of_its_data(path):
    assert load_config(path).data.side_convention in ("image", "patient")
