"""Training click models: configs/default-qata-clicks.yaml adds click inputs to any base model
with one command (`tevia train --config configs/default-qata-clicks.yaml --init MODEL`,
train.model_from_init), shown by a smoke run on the committed samples from the tiny model, whose
architecture differs from the config's own model section; and the "distance" click encoding."""
import dataclasses
import logging
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, TESTDATA
from tevia.checkpoint import read_model_json
from tevia.commands.cli import main as cli_main
from tevia.config import load_config
from tevia.model.clicks import Click, click_scale, render_clicks

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
    assert tuned == dataclasses.replace(base, click_inputs=True, click_context=True)  # the config's click settings
    assert info["metrics"]["checkpoint_monitor"] == load_config(CONFIG).train.checkpoint_monitor == "last"
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


def test_distance_encoding_decays_from_the_nearest_click_of_each_sign():
    maps = render_clicks([[Click(64, 64, True), Click(64, 100, True), Click(10, 10, False)]], (128, 128),
                         encoding="distance")
    assert maps[0, 0, 64, 64] == maps[0, 0, 64, 100] == maps[0, 1, 10, 10] == 1
    assert float(maps[0, 0, 64, 80]) == pytest.approx(math.exp(-16 / click_scale((128, 128))))  # 16 px from the nearest
    assert maps[0, 0, 0, 127] < maps[0, 0, 64, 80] and maps[0, 1, 64, 64] < 0.01
    with pytest.raises(ValueError, match="click encoding must be one of"):
        render_clicks([[Click(1, 1, True)]], (128, 128), encoding="gaussian")


def test_a_distance_encoded_injection_trains_from_a_text_only_base_model(tiny_model_dir):
    """A smoke training step of the "distance" design on real X-rays: the loss reaches the click
    injection only (train_only_clicks), its zero-initialised output convolutions included."""
    from tevia.checkpoint import load_network_weights
    from tevia.config import TrainConfig
    from tevia.training.data import CSVSegmentationDataset
    from tevia.inference.segmenter import Segmenter
    from tevia.training.lightning_module import LitTeViA
    from tevia.model.build import build_network

    base, info = read_model_json(tiny_model_dir)
    network = build_network(dataclasses.replace(base, click_inputs=True, click_encoding="distance"), text_dim=384)
    load_network_weights(network, tiny_model_dir, info, optional_modules=("clicks.",))
    assert network.clicks.encoding == "distance"
    data = CSVSegmentationDataset(TESTDATA / "qata_samples", "samples", image_size=tuple(base.image_size))
    items = [data[i] for i in range(4)]
    batch = {"image": torch.stack([i["image"] for i in items]), "mask": torch.stack([i["mask"] for i in items]),
             "text": [i["text"] for i in items]}
    text = Segmenter.load(tiny_model_dir, device="cpu").encode_text(batch["text"])
    lit = LitTeViA(network.train(), text, {t: i for i, t in enumerate(batch["text"])},
                   TrainConfig(augment=False, max_clicks=2, train_only_clicks=True, prototype_warmup_epochs=0))
    lit.training_step(batch, 0).backward()
    trained = {n for n, p in network.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all(n.startswith("clicks.") for n in trained)
    assert any(n.endswith(".2.weight") for n in trained)
