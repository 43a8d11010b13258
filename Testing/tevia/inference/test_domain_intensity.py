"""The domain check's per-slice intensity test (tevia.inference.domain): slices whose mean or
spread lie outside the training slices' range are unlike them, whatever their features say.

On real data: the profile of covid-ct-slices' training slices flags val's Radiopaedia-style
slices (brighter, noisier: issue 30) and passes val's scan of the training scans' acquisition."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import shared_path
from tevia.commands.domain import scaled_slices
from tevia.inference.domain import INTENSITY_MARGIN, DomainCheck, DomainProfile, intensity_statistics

OTHER_ACQUISITION = ("ct_1081", "ct_1246")  # val's scan like the training scans
RADIOPAEDIA = ("ct_1247", "ct_1374")  # val's two Radiopaedia-style scans


def _profile(intensity: np.ndarray | None) -> DomainProfile:
    generator = torch.Generator().manual_seed(0)
    return DomainProfile.fit(torch.randn(40, 4, generator=generator), torch.randn(10, 4, generator=generator),
                             "test images", "slices", [], intensity=intensity)


def test_the_range_is_the_training_slices_widened_by_the_margin():
    stats = np.array([[0.2, 0.1], [0.4, 0.3], [0.3, 0.2]])
    profile = _profile(stats)
    margin = INTENSITY_MARGIN * 0.2
    assert profile.intensity == {"mean": pytest.approx([0.2 - margin, 0.4 + margin]),
                                 "std": pytest.approx([0.1 - margin, 0.3 + margin])}
    inside, brighter, flatter = [0.4 + margin / 2, 0.2], [0.4 + 2 * margin, 0.2], [0.3, 0.1 - 2 * margin]
    assert profile.unlike_intensity(np.array([inside, brighter, flatter])).tolist() == [False, True, True]
    assert not _profile(None).unlike_intensity(np.array([brighter])).any(), "older profiles: no intensity test"


def test_intensity_statistics_are_each_slices_mean_and_spread():
    slices = np.stack([np.full((4, 4), 0.5), np.tile([0.0, 1.0], (4, 2))])
    np.testing.assert_allclose(intensity_statistics(slices), [[0.5, 0.0], [0.5, 0.5]])


def test_the_ranges_survive_save_and_load_and_reach_the_warning(tmp_path, tiny_model_dir):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    profile = _profile(np.array([[0.2, 0.1], [0.4, 0.3]]))
    profile.save(folder)
    loaded = DomainProfile.load(folder, json.loads((folder / "model.json").read_text()))
    assert loaded.intensity == profile.intensity
    check = DomainCheck(loaded, sitk.Image(8, 8, 2, sitk.sitkUInt8), 2)
    maps = [loaded.mean.reshape(1, -1, 1, 1).repeat(2, 1, 1, 1)]  # features at the mean: the feature test passes
    like = np.tile([0.1, 0.5], (8, 4))  # mean 0.3, spread 0.2: inside both ranges
    check.add(0, maps, np.stack([like, like + 0.6]))
    summary = check.summary()
    assert summary["unlike"] == 1 and summary["unlike_by_intensity"] == 1 and summary["unlike_slices"] == "1"
    assert "1 with intensities (mean or spread) outside the training slices' range" in summary["warning"]
    with pytest.raises(ValueError, match="intensity must map 'mean' and 'std'"):
        DomainProfile("x", "2d", [], loaded.mean, loaded.whitening, 1.0, intensity={"mean": [0.5, 0.1]})


def _statistics(root, split: str, span: tuple[str, str] | None = None) -> np.ndarray:
    with open(root / f"{split}.csv", newline="", encoding="utf-8") as handle:
        stems = [row["Image"].removeprefix("mask_").removesuffix(".png") for row in csv.DictReader(handle)]
    if span is not None:
        stems = stems[stems.index(span[0]):stems.index(span[1]) + 1]
    folder = root / split.capitalize() / "Images"
    return np.concatenate([intensity_statistics(scaled_slices(folder / f"{stem}.png")) for stem in stems])


def test_the_ct_training_slices_range_flags_the_radiopaedia_style_scans_and_passes_the_other():
    root = shared_path("covid-ct-slices")
    profile = _profile(_statistics(root, "train"))
    radiopaedia = profile.unlike_intensity(_statistics(root, "val", RADIOPAEDIA))
    other = profile.unlike_intensity(_statistics(root, "val", OTHER_ACQUISITION))
    assert len(radiopaedia) == 128 and len(other) == 166
    assert radiopaedia.mean() >= 0.95, f"only {radiopaedia.sum()} of 128 Radiopaedia-style slices flagged"
    assert other.mean() <= 0.02, f"{other.sum()} of 166 slices like the training scans flagged"
