"""A site's corrected CT slices enter a training set through the module's "Add to training set"
(bench/ct_site_export.py, which issue 30's adapted model is made from): real covid-ct slices, a
real slicer-core scene, the Logic's export. What is written must be the slices as stored (same
orientation, same masks, slice order kept), one row per corrected slice with its own
description, and the scan named in the Volume column."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, shared_path

sys.path.insert(0, str(REPO / "bench"))
import ct_site_export  # noqa: E402

SLICES = 3


@pytest.fixture(scope="module")
def scans():
    return {scan.span: scan for scan in ct_site_export.find_scans(shared_path("covid-ct-slices"), "val")}


def test_the_val_scans_are_cut_where_neighbouring_slices_jump(scans):
    spans = {name: span for name, span in ct_site_export.SITE_SCANS.items()}
    assert set(scans) == {ct_site_export.OTHER_ACQUISITION, *spans.values()}
    assert [len(scans[span].stems) for span in spans.values()] == [11, 117]


def test_corrected_slices_are_added_as_stored_one_row_per_slice(scans, tmp_path):
    dataset = tmp_path / "site"
    added = ct_site_export.export_site(dataset, "ct-lung-infection", shared_path("covid-ct-slices"), limit=SLICES)
    with open(dataset / "train.csv", newline="", encoding="utf-8") as handle:
        rows = {row["Image"]: row for row in csv.DictReader(handle)}
    assert sorted(rows) == sorted(name for names in added.values() for name in names)
    root = shared_path("covid-ct-slices") / "Val"
    for volume, span in ct_site_export.SITE_SCANS.items():
        scan = scans[span]
        assert len(added[volume]) == SLICES
        for index in range(SLICES):
            name = f"mask_{volume}_s{index:04d}.png"
            row = rows[name]
            assert row["Volume"] == volume and row["Convention"] == "image"
            assert row["Prompt"] == scan.descriptions[index], "each slice keeps its own description"
            assert row["Description"] == scan.descriptions[index].lower()
            stem = scan.stems[index]
            mask = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "Train" / "GTs" / name)))
            original_mask = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "GTs" / f"mask_{stem}.png"))) >= 128
            np.testing.assert_array_equal(mask > 0, original_mask)
            image = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "Train" / "Images" / name[5:]))).astype(float)
            original = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "Images" / f"{stem}.png"))).astype(float)
            assert np.corrcoef(image.ravel(), original.ravel())[0, 1] > 0.99, "same orientation, same slice"
            assert np.abs(image - original).mean() < 12, "only the volume's 8-bit scaling differs"


def test_mismatched_slices_are_refused_before_anything_is_written(tmp_path):
    images = np.zeros((2, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="must describe the same"):
        ct_site_export.add_scan_to_training_set(None, images, images, ["one"], "scan", tmp_path / "ds",
                                                "ct-lung-infection", tmp_path)
    assert not (tmp_path / "ds").exists()
    with pytest.raises(ValueError, match="is not a scan of"):
        ct_site_export.export_site(tmp_path / "ds", "ct-lung-infection", shared_path("covid-ct-slices"),
                                   scans={"x": ("ct_1247", "ct_1250")})
    assert not (tmp_path / "ds").exists()
