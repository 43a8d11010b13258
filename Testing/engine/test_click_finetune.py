"""configs/default-qata-clicks.yaml adds click inputs to any base model with one command
(`tevia train --config configs/default-qata-clicks.yaml --init MODEL`, train.model_from_init):
a smoke run on the committed samples from the tiny model, whose architecture differs from the
config's own model section."""
import dataclasses
import logging

import torch
from safetensors.torch import load_file

from conftest import REPO, TESTDATA
from tevia.checkpoint import read_model_json
from tevia.cli import main as cli_main
from tevia.config import load_config

CONFIG = REPO / "configs" / "default-qata-clicks.yaml"


def _train(out, *extra: str) -> int:
    return cli_main(["train", "--config", str(CONFIG), f"data.root={TESTDATA / 'qata_samples'}",
                     "data.train_split=samples", "data.val_split=samples", "data.val_fraction=0.2",
                     "train.max_epochs=1", "train.limit_train_batches=2", "train.batch_size=4", "train.threads=1",
                     f"train.out_dir={out}", *extra])


def test_the_clicks_config_adds_trained_click_inputs_to_another_base_model(tiny_model_dir, tmp_path):
    base, _ = read_model_json(tiny_model_dir)
    assert base.image_size != load_config(CONFIG).model.image_size  # another architecture than the config's
    assert _train(tmp_path / "run", "--init", str(tiny_model_dir)) == 0
    tuned, info = read_model_json(tmp_path / "run" / "model")
    assert tuned == dataclasses.replace(base, click_inputs=True)
    assert info["metrics"]["checkpoint_monitor"] == "val_click_dice"
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert set(after) - set(before) and all(k.startswith("clicks.") for k in set(after) - set(before))
    assert all(torch.equal(after[k], v) for k, v in before.items()), "train_only_clicks keeps the base weights"
    last_convs = [k for k in after if k.startswith("clicks.") and k.endswith(".2.weight")]
    assert last_convs and any(after[k].abs().sum() > 0 for k in last_convs), "the zero-initialised output trained"


def test_model_from_init_without_init_is_refused(tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    assert _train(tmp_path / "run") == 2
    assert "train.model_from_init builds the architecture of the initial model: give --init MODEL" in caplog.text
    assert not (tmp_path / "run").exists()
