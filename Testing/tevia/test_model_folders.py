"""tevia.model_folders: the one resolver of model names, each case of its documented order.

The Slicer module's ModelStore uses the same resolver for every name outside its catalogue:
the last test checks that both find the same folders.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tevia.model_folders import available_models, bundled_models_dir, find_model, resolve_model


def _model(folder: Path, name: str, version: str, weights: bool = True) -> Path:
    """A model folder as the resolver sees it: model.json (name, version) and model.safetensors."""
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"name": name, "version": version}))
    if weights:
        (folder / "model.safetensors").write_bytes(b"weights")
    return folder


@pytest.fixture
def places(tmp_path):
    """A bundled models folder with `default` and `shared`, a per-user folder with two versions of
    `lung` and a `shared` of its own."""
    bundled, user = tmp_path / "bundled", tmp_path / "user"
    _model(bundled / "default", "default", "0.2.0")
    _model(bundled / "shared", "shared", "1")
    _model(user / "lung-1.9", "lung", "1.9")
    _model(user / "lung-1.10", "lung", "1.10")
    _model(user / "shared-2", "shared", "2")
    return bundled, user


def test_the_bundled_default_is_found_by_name():
    folder = resolve_model("default")
    assert folder == bundled_models_dir() / "default" and (folder / "model.safetensors").is_file()
    assert "default" in available_models()


def test_bundled_names_come_before_per_user_models(places):
    bundled, user = places
    assert resolve_model("default", bundled, user) == bundled / "default"
    assert resolve_model("shared", bundled, user) == bundled / "shared", "a bundled name wins over a user model"
    assert resolve_model("shared-2", bundled, user) == user / "shared-2", "name-version picks the user's"


def test_per_user_models_by_name_are_the_newest_version_and_by_label_that_version(places):
    bundled, user = places
    assert resolve_model("lung", bundled, user) == user / "lung-1.10", "1.10 is newer than 1.9"
    assert resolve_model("lung-1.9", bundled, user) == user / "lung-1.9"


def test_folder_paths_absolute_relative_and_bare(places, tmp_path, monkeypatch):
    bundled, user = places
    local = _model(tmp_path / "work" / "mine", "mine", "3")
    assert resolve_model(str(local), bundled, user) == local
    monkeypatch.chdir(tmp_path / "work")
    assert resolve_model("./mine", bundled, user) == Path("./mine")
    assert resolve_model("mine", bundled, user) == Path("mine"), "an existing folder in the working folder"


def test_folders_without_a_model_and_missing_folders_say_what_a_model_folder_holds(places, tmp_path):
    bundled, user = places
    half = _model(tmp_path / "half", "half", "1", weights=False)
    with pytest.raises(FileNotFoundError, match=r"must hold model.json and model.safetensors \(it has no "
                                                r"model.safetensors\)"):
        resolve_model(half, bundled, user)
    with pytest.raises(FileNotFoundError, match="does not exist: a model folder must hold model.json"):
        resolve_model(tmp_path / "nowhere", bundled, user)


def test_hub_ids_are_never_downloaded_they_are_paths_that_do_not_exist(places):
    bundled, user = places
    with pytest.raises(FileNotFoundError, match="model folder facebook/convnext-tiny-224 does not exist"):
        resolve_model("facebook/convnext-tiny-224", bundled, user)


def test_unknown_names_list_the_bundled_and_the_per_user_models(places):
    bundled, user = places
    assert find_model("liver", bundled, user) is None
    with pytest.raises(ValueError, match=r"unknown model 'liver'; bundled models: \['default', 'shared'\]; "
                                         r"models in .*user: \['lung-1.9', 'lung-1.10', 'shared-2'\]"):
        resolve_model("liver", bundled, user)


def test_the_slicer_model_store_finds_what_the_engine_finds(places, tmp_path):
    from TeViASegmentLib import models

    bundled, user = places
    store = models.ModelStore([], tmp_path / "cache", bundled, user)
    local = _model(tmp_path / "local", "local", "1")
    for name in ("lung", "lung-1.9", "shared", "shared-2", str(local)):
        assert store.resolve(name) == str(resolve_model(name, bundled, user)), name
    with pytest.raises(ValueError, match="'liver' is not in the catalogue"):
        store.resolve("liver")
    with pytest.raises(ValueError, match="must hold model.json and model.safetensors"):
        store.resolve(str(tmp_path / "nowhere"))
