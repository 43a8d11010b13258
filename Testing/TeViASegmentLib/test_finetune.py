"""Fine-tune from Slicer through the Logic: real exported CT slices of two volumes, a real
(tiny) fine-tune in child processes, the new model listed and found by name; cancel ends the
children's process tree and leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import TESTDATA, shared_path
from slicer_fixtures import load_volume, slicer_scene  # noqa: F401 (fixture)

from TeViASegmentLib import finetune, models, scene, settings


@pytest.fixture
def logic(slicer_scene, tmp_path):
    import TeViASegment

    store = models.ModelStore(models.load_catalogue(), cache_dir=tmp_path / "cache", user_dir=tmp_path / "my-models")
    logic = TeViASegment.TeViASegmentLogic(settingsStore=settings.JsonFileSettings(tmp_path / "settings.json"),
                                           workerPython=sys.executable, modelStore=store)
    yield logic
    logic.shutdown()


def _add(logic, folder, volume_file, mask_file, label, name, prompt, dataset):
    volume = load_volume(shared_path("volumes", folder, volume_file), name)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_path("volumes", folder, mask_file)))) == label
    node, (segment_id,) = scene.import_labelmap(mask.astype(np.uint8), {1: prompt}, volume)
    return logic.addToTrainingSet(volume, node, segment_id, dataset, prompt=prompt)


@pytest.fixture
def dataset(logic, tmp_path):
    """A training set of two real CT volumes, made with "Add to training set"."""
    folder = tmp_path / "corrections"
    _add(logic, "spleen-ct", "ct.nii.gz", "spleen_manual.nii.gz", 1, "spleen-ct", "spleen", folder)
    _add(logic, "totalseg-example-ct", "ct.nii.gz", "seg_total.nii.gz", 11, "chest-ct",
         "Unilateral pulmonary infection, one infected area, lower left lung.", folder)
    return folder


def test_split_holds_out_whole_volumes():
    rows = [{"Volume": v} for v in ["a"] * 5 + ["b"] * 3 + ["c"] * 4 + ["d"]]
    train, held_out = finetune.split_by_volume(rows, 0.25, seed=1)
    assert len(held_out) == 1 and sorted(train + held_out) == ["a", "b", "c", "d"]
    assert finetune.split_by_volume(rows, 0.25, seed=1) == (train, held_out)  # reproducible
    with pytest.raises(ValueError, match="at least two volumes"):
        finetune.split_by_volume([{"Volume": "a"}] * 9, 0.25)
    with pytest.raises(ValueError, match="holdout_fraction"):
        finetune.split_by_volume(rows, 1.0)


def test_fine_tune_writes_a_new_listed_model_with_its_card(logic, dataset, tiny_model_dir, monkeypatch):
    progress = []
    settings_ = finetune.FineTuneSettings(epochs=2, batch_size=8, threads=1, device="cpu", name="my-ct",
                                          reference_data=str(TESTDATA / "qata_samples"), reference_split="samples",
                                          reference_limit=4)
    job = logic.fineTuneAsync(dataset, model=str(tiny_model_dir), settings=settings_,
                              onProgress=lambda *p: progress.append(p))
    work = job.work
    folder = job.wait(600)
    assert ("epoch", 1, 2) in progress and ("epoch", 2, 2) in progress and ("evaluate", 0, 5) in progress
    assert folder == logic.models.user_dir / "my-ct-1" and not work.exists()
    info = json.loads((folder / "model.json").read_text())
    assert info["version"] == "1" and info["parent"]["name"] == "tiny-test"
    tuning = info["fine_tuning"]
    assert tuning["held_out_volumes"] and tuning["train_volumes"]
    assert not set(tuning["held_out_volumes"]) & set(tuning["train_volumes"])
    assert tuning["train_slices"] > 0 and tuning["held_out_slices"] > 0
    for key in ("held_out_before", "held_out_after", "reference_before", "reference_after"):
        assert 0.0 <= tuning["evaluations"][key]["dice_global"] <= 1.0
    assert tuning["evaluations"]["reference_after"]["n"] == 4
    card = (folder / "README.md").read_text()
    assert "# my-ct 1" in card and "tiny-test" in card and "held out" in card and "forgetting" in card
    # The new model is in the selector and found by name, by version and by the engine.
    assert "my-ct-1" in logic.models.choices() and "default" in logic.models.choices()
    assert logic.models.resolve("my-ct") == logic.models.resolve("my-ct-1") == str(folder)
    from tevia.model_folders import resolve_model

    monkeypatch.setenv("TEVIA_USER_MODELS", str(logic.models.user_dir))
    assert resolve_model("my-ct") == folder


def test_earlier_versions_stay_choosable(tmp_path, tiny_model_dir):
    store = models.ModelStore(models.load_catalogue(), cache_dir=tmp_path / "c", user_dir=tmp_path / "m")
    for version in ("1", "2", "10"):
        target = tmp_path / "m" / f"ct-{version}"
        shutil.copytree(tiny_model_dir, target)
        info = json.loads((target / "model.json").read_text())
        (target / "model.json").write_text(json.dumps({**info, "name": "ct", "version": version}))
    assert store.choices()[-3:] == ["ct-1", "ct-2", "ct-10"]
    assert store.resolve("ct") == str(tmp_path / "m" / "ct-10")  # the newest by number, not by text
    assert store.resolve("ct-2") == str(tmp_path / "m" / "ct-2")
    assert finetune._next_version("ct", tmp_path / "m") == "11"


def test_cancel_ends_the_process_tree_and_keeps_nothing(logic, dataset, tiny_model_dir):
    job = logic.fineTuneAsync(dataset, model=str(tiny_model_dir),
                              settings=finetune.FineTuneSettings(epochs=50, threads=1, device="cpu"))
    pid, work = job.pid, job.work
    time.sleep(1.0)
    assert job.poll() and job.pid == pid
    job.cancel()
    assert job.state == "cancelled" and not job.poll()
    if os.name != "nt":
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # no process of the child's group is left
    assert not work.exists()
    assert not logic.models.user_dir.exists() or not any(logic.models.user_dir.iterdir())
    with pytest.raises(finetune.jobs.JobCancelled):
        job.wait(1)


def test_bad_training_sets_are_refused_clearly(logic, tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="add segments to the training set first"):
        logic.fineTuneAsync(tmp_path / "empty", model=str(tiny_model_dir))
    old = tmp_path / "old"
    old.mkdir()
    (old / "train.csv").write_text("Image,Description\nmask_a.png,left lung\n")
    with pytest.raises(ValueError, match="made with 'Add to training set'"):
        logic.fineTuneAsync(old, model=str(tiny_model_dir))
    assert logic.fineTuneJob is None


def test_the_ct_catalogue_model_is_built_not_downloaded_and_then_taken_by_name(tmp_path, tiny_model_dir):
    store = models.ModelStore(models.load_catalogue(), cache_dir=tmp_path / "c", user_dir=tmp_path / "m")
    entry = store.entry("ct-lung-infection")
    assert entry.build == "tevia train --config configs/ct-covid-lung.yaml --init default" and not entry.url
    assert not store.available("ct-lung-infection")
    with pytest.raises(ValueError, match="not built on this computer yet.*tevia train --config configs/ct-covid-lung"):
        store.resolve("ct-lung-infection")
    with pytest.raises(ValueError, match="built, not downloaded"):
        store.download("ct-lung-infection")
    target = tmp_path / "m" / "ct-lung-infection-1.0.0"
    shutil.copytree(tiny_model_dir, target)
    info = json.loads((target / "model.json").read_text())
    (target / "model.json").write_text(json.dumps({**info, "name": "ct-lung-infection", "version": "1.0.0"}))
    assert store.available("ct-lung-infection") and store.resolve("ct-lung-infection") == str(target)
    assert "ct-lung-infection" in store.choices()


def test_a_python_without_the_training_packages_fails_with_what_to_install(dataset, tiny_model_dir, tmp_path):
    import subprocess

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    bare = tmp_path / "bare" / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    job = finetune.FineTuneJob(dataset, tiny_model_dir, finetune.FineTuneSettings(epochs=1), python=str(bare),
                               models_dir=tmp_path / "m")
    with pytest.raises(finetune.jobs.JobError, match=r"step held_out_before .*lacks .*requirements-train\.txt"):
        job.wait(120)
    assert not (tmp_path / "m").exists() and not job.work.exists()
