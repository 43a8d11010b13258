"""Utilities/bundle_click_injection.py: the bundled default model takes the click injection of a
model trained from it with clicks, and refuses any other source, writing nothing.

Every test works on a copy of the bundled default folder in a temp folder (never on
TeViASegment/Resources/Models/default itself), with sources built from its real weights.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import REPO, build_untrained_click_model
from tevia.checkpoint import read_model_json, update_model_json
from tevia.files import sha256_file
from tevia.inference.segmenter import Segmenter
from tevia.model_folders import resolve_model

CONFIG = REPO / "configs" / "default-qata-clicks.yaml"


def _script():
    spec = importlib.util.spec_from_file_location("bundle_click_injection",
                                                  REPO / "Utilities" / "bundle_click_injection.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def default_copy(tmp_path) -> Path:
    """A copy of the bundled default model folder (model card, domain profile, evaluation/ included)."""
    return Path(shutil.copytree(resolve_model("default"), tmp_path / "default"))


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> Path:
    """A valid source: the default with a zero-initialised injection (another injection than the bundled one)."""
    return build_untrained_click_model(tmp_path_factory.mktemp("sources") / "untrained")


def _bundle(source: Path, out: Path, version: str = "9.9.9", note: str = "test injection") -> int:
    return _script().main(["--source", str(source), "--out", str(out), "--version", version, "--note", note,
                           "--config", str(CONFIG)])


def test_a_source_trained_from_the_default_gives_it_its_injection_and_nothing_else(default_copy, untrained):
    (default_copy / "model.safetensors").chmod(0o644)
    before = _files(default_copy)
    _, old = read_model_json(default_copy)
    assert _bundle(untrained, default_copy) == 0
    assert (default_copy / "model.safetensors").stat().st_mode & 0o777 == 0o644, "the permissions stay"
    after = _files(default_copy)
    assert set(after) == set(before)
    changed = {name for name in before if after[name] != before[name]}
    assert changed == {"model.json", "model.safetensors"}, "the model card, domain profile and evaluation stay"
    config, info = read_model_json(default_copy)
    assert config.click_inputs and info["version"] == "9.9.9"
    assert {k: v for k, v in info.items() if k not in ("version", "clicks", "weights_sha256", "config")} == \
        {k: v for k, v in old.items() if k not in ("version", "clicks", "weights_sha256", "config")}
    clicks = info["clicks"]
    assert clicks["source_model"] == "tevia-qata-mobilenet-minilm-clicks-untrained" and clicks["note"] == "test injection"
    assert clicks["training_config"]["file"] == "configs/default-qata-clicks.yaml"
    assert clicks["training_config"]["train"]["train_only_clicks"] is True
    assert info["weights_sha256"] == sha256_file(default_copy / "model.safetensors")
    new, source = load_file(str(default_copy / "model.safetensors")), load_file(str(untrained / "model.safetensors"))
    assert clicks["parameters"] == sum(t.numel() for k, t in source.items() if k.startswith("clicks.")) > 0
    assert set(new) == set(source) and all(torch.equal(new[k], source[k]) for k in new)
    assert clicks["injection_sha256"] != old["clicks"]["injection_sha256"], "another injection than the bundled one"
    assert Segmenter.load(default_copy, device="cpu").spec.click_inputs

    assert _bundle(untrained, default_copy) == 0  # again, the same source: the same bytes
    assert _files(default_copy) == after


def test_a_source_whose_other_weights_differ_is_refused_and_nothing_is_written(default_copy, untrained, tmp_path,
                                                                               caplog):
    source = Path(shutil.copytree(untrained, tmp_path / "retrained"))
    tensors = load_file(str(source / "model.safetensors"))
    name = next(k for k in sorted(tensors) if k.startswith("stages.") and tensors[k].is_floating_point())
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = torch.nextafter(tensors[name].view(-1)[0], torch.tensor(float("inf")))  # one ulp
    save_file(tensors, str(source / "model.safetensors"), metadata={"format": "tevia-model/1"})
    update_model_json(source, weights_sha256=sha256_file(source / "model.safetensors"))
    before = _files(default_copy)
    with caplog.at_level(logging.ERROR):
        assert _bundle(source, default_copy) == 2
    assert f"1 tensors outside the click injection differ from {default_copy}'s (first: ['{name}'])" in caplog.text
    assert "train.train_only_clicks" in caplog.text
    assert _files(default_copy) == before


def test_a_source_without_click_inputs_or_training_config_is_refused(default_copy, text_only_default_dir, untrained,
                                                                    tmp_path, caplog):
    before = _files(default_copy)
    with caplog.at_level(logging.ERROR):
        assert _bundle(text_only_default_dir, default_copy) == 2
        assert "has no click inputs" in caplog.text
        assert _script().main(["--source", str(untrained), "--out", str(default_copy), "--version", "1",
                               "--note", "n"]) == 2  # no --config, and no config.yaml beside the source
        assert f"the training config {untrained.parent / 'config.yaml'} does not exist: give --config" in caplog.text
    assert _files(default_copy) == before
    assert json.loads((default_copy / "model.json").read_text()) == json.loads(before["model.json"])
