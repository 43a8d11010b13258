"""The per-user models folder: `train.install` puts a model there, `tevia predict --model NAME`
and `tevia evaluate --model NAME` find it by name (how the CT catalogue model is built)."""

from __future__ import annotations

import json
import logging

from conftest import REPO, TESTDATA
from tevia.commands.cli import main as cli_main
from tevia.user_models import find_user_model, list_user_models, version_key

SAMPLES = TESTDATA / "qata_samples"


def test_train_installs_a_model_that_predict_and_evaluate_take_by_name(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TEVIA_USER_MODELS", str(tmp_path / "models"))
    card = tmp_path / "card.md"
    card.write_text("# ct-smoke: what it is for\n")

    def build(out):
        return cli_main(["train", "--config", str(REPO / "configs" / "smoke.yaml"), f"data.root={SAMPLES}",
                         f"train.out_dir={out}", "train.max_epochs=2", "train.install=true",
                         "train.model_name=ct-smoke", "train.model_version=1.0.0", f"train.model_card={card}"])

    assert build(tmp_path / "run") == 0
    folder = tmp_path / "models" / "ct-smoke-1.0.0"
    info = json.loads((folder / "model.json").read_text())
    assert (info["name"], info["version"]) == ("ct-smoke", "1.0.0")
    assert (folder / "README.md").read_text() == card.read_text() and (folder / "model.safetensors").is_file()
    assert [m.label for m in list_user_models()] == ["ct-smoke-1.0.0"]

    weights = (folder / "model.safetensors").read_bytes()
    with caplog.at_level(logging.ERROR):
        assert build(tmp_path / "again") == 2  # that version is there: refused before training
    assert "already exists" in caplog.text and not (tmp_path / "again").exists()
    assert (folder / "model.safetensors").read_bytes() == weights

    out = tmp_path / "eval"
    assert cli_main(["evaluate", "--model", "ct-smoke", "--data", str(SAMPLES), "--split", "samples",
                     "--out", str(out), "--limit", "2", "--no-hd95"]) == 0
    assert json.loads((out / "metrics.json").read_text())["model_path"] == str(folder)
    image = next((SAMPLES / "Images").iterdir())
    assert cli_main(["predict", "--model", "ct-smoke-1.0.0", "--input", str(image), "--text", "left lung",
                     "--out", str(tmp_path / "mask.png")]) == 0
    assert (tmp_path / "mask.png").is_file()
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert cli_main(["evaluate", "--model", "ct-smok", "--data", str(SAMPLES), "--split", "samples",
                         "--out", str(tmp_path / "e2")]) == 2
    assert "ct-smoke-1.0.0" in caplog.text  # the error lists this computer's models


def test_the_newest_version_is_found_by_name_and_any_version_by_its_label(tmp_path):
    for version in ("0.9", "0.10", "1.0.0-rc1"):
        folder = tmp_path / f"m-{version}"
        folder.mkdir()
        (folder / "model.json").write_text(json.dumps({"name": "m", "version": version}))
        (folder / "model.safetensors").write_bytes(b"")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.json").write_text("{not json")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"")
    assert [m.version for m in list_user_models(tmp_path)] == ["0.9", "0.10", "1.0.0-rc1"]
    assert find_user_model("m", tmp_path) == tmp_path / "m-1.0.0-rc1"
    assert find_user_model("m-0.9", tmp_path) == tmp_path / "m-0.9"
    assert find_user_model("other", tmp_path) is None and find_user_model("m", tmp_path / "missing") is None
    assert version_key("0.10") > version_key("0.9")
