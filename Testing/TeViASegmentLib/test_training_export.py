"""The annotator loop's export: a real CT and its manual spleen mask into the QaTa layout."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_path

from TeViASegmentLib import training_export


@pytest.fixture(scope="module")
def spleen():
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_path("volumes", "spleen-ct", "ct.nii.gz"))))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_path("volumes", "spleen-ct", "spleen_manual.nii.gz"))))
    return volume, mask


def _rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def test_export_writes_the_slices_holding_the_segment(spleen, tmp_path):
    volume, mask = spleen
    added = training_export.export_training_slices(volume, mask, "  the  spleen ", tmp_path / "ds", "spleen CT #1")
    slices = np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))
    assert len(added) == len(slices) > 0
    rows = _rows(tmp_path / "ds" / "train.csv")
    assert rows[0] == list(training_export.CSV_COLUMNS)
    assert rows[1:] == [[name, "the spleen", "image", "the spleen", "patient", "spleen CT #1"] for name in added]
    assert added[0] == f"mask_spleen_CT_1_s{slices[0]:04d}.png"
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ds" / "Train" / "Images" / added[0][5:])))
    gt = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ds" / "Train" / "GTs" / added[0])))
    assert image.dtype == np.uint8 and image.shape == volume.shape[1:] and image.max() > 200
    np.testing.assert_array_equal(gt, (mask[slices[0]] != 0) * 255)


def test_appending_never_overwrites_rows_or_files(spleen, tmp_path):
    volume, mask = spleen
    first = training_export.export_training_slices(volume, mask, "spleen", tmp_path, "ct")
    gt_dir = tmp_path / "Train" / "GTs"
    before = {p.name: p.read_bytes() for p in gt_dir.iterdir()}
    second = training_export.export_training_slices(volume, (mask * 0) + (mask[::-1] != 0), "spleen, edited", tmp_path, "ct")
    assert not set(first) & set(second)
    assert all((gt_dir / name).read_bytes() == data for name, data in before.items())
    rows = _rows(tmp_path / "train.csv")
    assert [row[:2] for row in rows[1:len(first) + 1]] == [[n, "spleen"] for n in first]
    assert [row[:2] for row in rows[len(first) + 1:]] == [[n, "spleen, edited"] for n in second]
    assert not [p for p in tmp_path.rglob(".tmp-*")], "no temporary files left"


def test_bad_inputs_are_refused_and_write_nothing(spleen, tmp_path):
    volume, mask = spleen
    with pytest.raises(ValueError, match="mask_kji shape"):
        training_export.export_training_slices(volume, mask[:2], "spleen", tmp_path / "a", "ct")
    with pytest.raises(ValueError, match="prompt must contain text"):
        training_export.export_training_slices(volume, mask, " ", tmp_path / "b", "ct")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="convention must be one of"):
        training_export.export_training_slices(volume, mask, "spleen", tmp_path / "d", "ct", convention="radiological")
    assert not (tmp_path / "d").exists()
    for header in ("path,label\nx,y\n", "Image,Description\nmask_a.png,left lung\n"):  # another tool's; an older export
        (tmp_path / "c").mkdir(exist_ok=True)
        (tmp_path / "c" / "train.csv").write_text(header)
        with pytest.raises(ValueError, match="has columns"):
            training_export.export_training_slices(volume, mask, "spleen", tmp_path / "c", "ct")
        assert (tmp_path / "c" / "train.csv").read_text() == header
        assert not (tmp_path / "c" / "Train").exists()


def test_exported_set_loads_with_the_engine_dataset(spleen, tmp_path):
    from tevia.training.data import dataset as dataset_module

    volume, mask = spleen
    added = training_export.export_training_slices(volume, mask, "spleen", tmp_path, "ct", split="val")
    data = dataset_module.CSVSegmentationDataset(tmp_path, "val", image_size=(64, 64))
    assert len(data) == len(added)
    item = data[0]
    assert item["text"] == "spleen" and item["mask"].shape == (1, 64, 64) and 0 < float(item["mask"].mean()) < 1
