"""Model folders: save/load equality (prototype included), tamper and truncation refusal."""

import json

import numpy as np
import pytest
import torch

from tevia.checkpoint import CheckpointError
from tevia.model_folders import resolve_model
from tevia.inference.segmenter import Segmenter

torch.set_num_threads(1)


def activate_prototype(network):
    network.prototype.start_collecting()
    network.prototype.observe([torch.rand(2, w) * 3 for w in network.stage_widths])
    network.prototype.finish_collecting()


@pytest.fixture()
def trained_like_model(tmp_path, tiny_model_dir):
    """The tiny model with an active prototype, saved again: what a finished training exports."""
    from tevia.checkpoint import read_model_json, save_model

    seg = Segmenter.load(tiny_model_dir, device="cpu")
    activate_prototype(seg.network)
    config, info = read_model_json(tiny_model_dir)
    meta = {k: v for k, v in info.items() if k not in ("format", "config", "weights_sha256")}
    return save_model(tmp_path / "model", seg.network, config, meta), seg


def test_saved_and_reloaded_model_gives_identical_outputs(trained_like_model):
    folder, original = trained_like_model
    reloaded = Segmenter.load(folder, device="cpu")
    assert reloaded.network.prototype.active
    for i in range(3):
        torch.testing.assert_close(reloaded.network.prototype.vector(i), original.network.prototype.vector(i))
    images = np.random.default_rng(0).random((2, 64, 64), dtype=np.float32)
    prompt = "Unilateral pulmonary infection, one infected area, lower left lung."
    np.testing.assert_array_equal(reloaded.predict(images, prompt), original.predict(images, prompt))


def test_tampered_weights_are_refused(trained_like_model):
    folder, _ = trained_like_model
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        Segmenter.load(folder, device="cpu")


def test_truncated_weights_are_refused_even_without_a_recorded_hash(trained_like_model):
    folder, _ = trained_like_model
    info = json.loads((folder / "model.json").read_text())
    del info["weights_sha256"]
    (folder / "model.json").write_text(json.dumps(info))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="safetensors"):
        Segmenter.load(folder, device="cpu")


def test_other_architecture_is_refused_naming_keys(trained_like_model):
    folder, _ = trained_like_model
    info = json.loads((folder / "model.json").read_text())
    info["config"]["neck_channels"] = [16, 16, 32, 64]
    (folder / "model.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="shape mismatch|missing keys"):
        Segmenter.load(folder, device="cpu")


def test_unknown_model_names_and_missing_folders(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        resolve_model("no-such-model")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "missing" / "model"))
    with pytest.raises(FileNotFoundError, match="no model.json"):
        resolve_model(tmp_path)


def test_segmenter_features_reused_for_new_prompts(tiny_model_dir):
    seg = Segmenter.load(tiny_model_dir, device="cpu")
    images = np.random.default_rng(1).random((3, 64, 64), dtype=np.float32)
    feats = seg.encode_images(images)
    assert len(feats) == 3 and feats.nbytes > 0
    text = seg.encode_text(["lower left lung", "lower right lung"])
    assert text.shape == (2, 16, 384)
    a = seg.decode(feats, text[0:1])
    np.testing.assert_allclose(a.numpy(), seg.predict(images, "lower left lung"), atol=1e-6)
    np.testing.assert_allclose(seg.decode(feats[1:2], text[0:1]).numpy(), a[1:2].numpy(), atol=1e-6)
    assert a.shape == (3, 64, 64) and float(a.min()) >= 0 and float(a.max()) <= 1
    with pytest.raises(ValueError, match=r"\(B, 64, 64\)"):
        seg.encode_images(np.zeros((1, 32, 32), np.float32))
    with pytest.raises(ValueError, match="non-empty list"):
        seg.encode_text("just a string")


def test_a_text_only_network_leaves_out_a_models_click_injection_only_when_told():
    """`tevia train --init default` with a text-only config (the CT model): the bundled default's
    click injection is left out (optional_modules); a plain load still refuses it, naming it."""
    import dataclasses

    from safetensors.torch import load_file

    from tevia.checkpoint import load_network_weights, read_model_json
    from tevia.model.build import build_network

    default = resolve_model("default")
    config, info = read_model_json(default)
    network = build_network(dataclasses.replace(config, click_inputs=False), text_dim=384, pretrained_vision=False)
    with pytest.raises(CheckpointError, match=r"unexpected keys \['clicks\.levels"):
        load_network_weights(network, default, info)
    load_network_weights(network, default, info, optional_modules=("clicks.",))
    saved = load_file(str(default / "model.safetensors"))
    own = network.state_dict()
    assert set(saved) - set(own) and all(k.startswith("clicks.") for k in set(saved) - set(own))
    assert all(torch.equal(own[k], saved[k]) for k in own)
