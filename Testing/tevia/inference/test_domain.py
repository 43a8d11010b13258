"""The out-of-domain check (tevia.inference.domain): `tevia domain`, strict loading, the bundled model's
verdicts on real X-rays, CT, MRI and a CT slice saved as PNG, and `tevia predict`'s report."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import SimpleITK as sitk
import torch

from conftest import TESTDATA
from tevia.commands import cli
from tevia.checkpoint import CheckpointError, read_model_json
from tevia.inference.domain import DOMAIN_FILE, WARNING_PREFIX, slice_ranges
from tevia.inference.segmenter import Segmenter
from tevia.inference.pipeline import FeatureCache, segment_volume
from tevia.volume.io import read_input

SAMPLES = TESTDATA / "qata_samples"
VOLUMES = TESTDATA / "volumes"
PROMPT = "Unilateral pulmonary infection, one infected area, lower left lung."
NOT_XRAYS = {  # input -> a reason the warning must give besides the pixels
    "totalseg-ct.nii.gz": "3D volume of 30 slices",
    "spinalcord-t2.nii.gz": "3D volume of",
    "ct-head-dicom-12": "DICOM Modality is CT",
    "totalseg-ct-slice15.png": None,
}


def xray_paths() -> list:
    rows = list(csv.DictReader(open(SAMPLES / "samples.csv", encoding="utf-8")))
    return [SAMPLES / "Images" / row["Image"].removeprefix("mask_") for row in rows]


@pytest.fixture(scope="module")
def default_model():
    torch.set_num_threads(1)
    return Segmenter.load("default", device="cpu")


def describe(folder) -> int:
    return cli.main(["domain", "--model", str(folder), "--data", str(SAMPLES), "--train-split", "samples",
                     "--val-split", "samples", "--description", "test X-rays", "--dicom-modalities", "cr, dx",
                     "--device", "cpu"])


@pytest.fixture(scope="module")
def described_model(tiny_model_dir, tmp_path_factory):
    """A copy of the tiny model with a profile made by `tevia domain` on the committed X-rays."""
    folder = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("described") / "model")
    assert describe(folder) == 0
    return folder


def test_tevia_domain_writes_a_checksummed_profile_that_loads(described_model):
    _, info = read_model_json(described_model)
    entry = info["domain"]
    assert (entry["file"], entry["description"], entry["dimensionality"]) == (DOMAIN_FILE, "test X-rays", "2d")
    assert entry["dicom_modalities"] == ["CR", "DX"]
    assert entry["calibration"]["val_images"] == 20 and entry["calibration"]["val_false_alarms"] <= 0.01
    profile = Segmenter.load(described_model, device="cpu").domain
    assert profile.threshold == pytest.approx(entry["threshold"]) and profile.mean.shape == (96,)


@pytest.mark.parametrize("damage, message", [("truncate", "sha256"), ("delete", "missing")])
def test_a_damaged_profile_is_refused(described_model, damage, message, tmp_path):
    folder = shutil.copytree(described_model, tmp_path / "model")
    path = folder / DOMAIN_FILE
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-10])
    else:
        path.unlink()
    with pytest.raises(CheckpointError, match=message):
        Segmenter.load(folder, device="cpu")
    assert describe(folder) == 0, "tevia domain replaces a damaged profile"
    assert Segmenter.load(folder, device="cpu").domain is not None


def test_tevia_domain_explains_a_bad_data_folder(tiny_model_dir, tmp_path, capsys):
    assert cli.main(["domain", "--model", str(tiny_model_dir), "--data", str(tmp_path)]) == 2
    assert "no CSV for split 'train'" in capsys.readouterr().err
    assert not (tiny_model_dir / DOMAIN_FILE).exists()


def test_a_model_without_a_profile_segments_and_says_it_cannot_check(tiny_model_dir):
    image, _ = read_input(xray_paths()[0])
    result = segment_volume(Segmenter.load(tiny_model_dir, device="cpu"), image, [PROMPT])
    assert result.domain["checked"] is False and "tevia domain" in result.domain["note"]
    assert not any(w.startswith(WARNING_PREFIX) for w in result.warnings)


def test_real_xrays_raise_no_warning(default_model):
    for path in xray_paths():
        image, _ = read_input(path)
        result = segment_volume(default_model, image, [PROMPT])
        assert result.domain["checked"] and result.domain["warning"] is None, (path.name, result.domain)
        assert result.domain["score_max"] < result.domain["threshold"]


@pytest.mark.parametrize("name", NOT_XRAYS)
def test_ct_mri_and_a_ct_slice_png_raise_a_warning(default_model, name):
    image, _ = read_input(VOLUMES / name)
    result = segment_volume(default_model, image, [PROMPT])
    domain = result.domain
    assert domain["warning"] in result.warnings and domain["warning"].startswith(WARNING_PREFIX)
    assert "2D frontal chest X-rays" in domain["warning"]
    assert domain["unlike"] > domain["slices"] // 2, domain  # the pixels alone, not only the metadata
    if NOT_XRAYS[name]:
        assert any(NOT_XRAYS[name] in reason for reason in domain["reasons"]), domain["reasons"]
    assert sum(result.voxels.values()) >= 0 and result.labelmap.GetSize() == image.GetSize()  # still segmented


def test_features_from_the_cache_are_checked_too(default_model):
    image, _ = read_input(VOLUMES / "totalseg-ct.nii.gz")
    cache = FeatureCache(2**30)
    first = segment_volume(default_model, image, [PROMPT], feature_cache=cache)
    second = segment_volume(default_model, image, ["lower right lung"], feature_cache=cache)
    assert second.timings["cache_hit"] == 1.0
    assert second.domain == first.domain


def test_slice_ranges():
    assert slice_ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert slice_ranges([]) == ""


@pytest.mark.parametrize("source, warned", [(VOLUMES / "totalseg-ct.nii.gz", True), (VOLUMES / "spinalcord-t2.nii.gz", True),
                                            (VOLUMES / "totalseg-ct-slice15.png", True), (xray_paths()[1], False)],
                         ids=["ct", "mri", "ct-png", "xray"])
def test_tevia_predict_logs_the_warning_and_writes_it_to_the_sidecar(source, warned, tmp_path, capsys):
    out = tmp_path / "out" / ("mask.png" if source.suffix == ".png" else "mask.nii.gz")
    assert cli.main(["predict", "--model", "default", "--device", "cpu", "--input", str(source),
                     "--text", PROMPT, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert (f"WARNING: {source.name}: {WARNING_PREFIX}" in err) is warned, err
    sidecar = json.loads(next(p for p in out.parent.iterdir() if p.suffix == ".json").read_text())
    assert sidecar["domain"]["checked"] and (sidecar["domain"]["warning"] is not None) is warned
    assert (sidecar["domain"]["warning"] in sidecar["warnings"]) is warned
    assert sitk.ReadImage(str(out)).GetSize() == sitk.ReadImage(str(source)).GetSize()
