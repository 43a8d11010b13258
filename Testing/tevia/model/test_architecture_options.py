"""Each architecture option (docs/FIDELITY.md) changes the computation, bad values are refused
naming the key, the keys work as overrides, and a config without them is today's network."""

import json
import math

import numpy as np
import pytest
import torch
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetResBlock

from conftest import REPO, shared_path
from tevia.config import ModelConfig, TextConfig, VisionConfig, load_config
from tevia.model.alignment import foreground_vectors, resize_layout
from tevia.model.build import REFERENCE_ARCHITECTURE, build_network
from tevia.model.positions import sequence_positions
from tevia.model.prototype import HistoricPrototype
from tevia.model.reference_names import load_reference_state_dict

torch.set_num_threads(1)
OPTIONS = [(k, v) for k, v in REFERENCE_ARCHITECTURE.items() if k not in ("foreground_pooling", "prototype_range_eps")]


def small_network(**kw):
    kw.setdefault("vision", VisionConfig("mobilenet_v2", "", False))
    config = ModelConfig(text=TextConfig(max_tokens=8), image_size=(64, 64), neck_channels=[16, 16, 32, 32],
                         stage_tokens=[8, 4, 4], **kw)
    torch.manual_seed(0)
    return build_network(config, text_dim=32)


def logits(net, image, text):
    with torch.no_grad():
        return net.eval()(image, text).logits


@pytest.mark.parametrize("key, value", OPTIONS)
def test_each_option_changes_the_output(key, value):
    """Same weights where both networks have them; the reference's value gives another output."""
    image, text = torch.rand(2, 1, 64, 64), torch.randn(2, 8, 32)
    ours, theirs = small_network(), small_network(**{key: value})
    theirs.load_state_dict(ours.state_dict(), strict=False)
    for stage in theirs.stages:  # a visible cross-attention, so that text-side options show
        stage.cross_scale.data.fill_(1.0)
    for stage in ours.stages:
        stage.cross_scale.data.fill_(1.0)
    assert not torch.allclose(logits(ours, image, text), logits(theirs, image, text), atol=1e-4)


def test_up_block_basic_is_monai_basic_block():
    assert all(isinstance(s.up.conv_block, UnetResBlock) for s in small_network().stages)
    assert all(isinstance(s.up.conv_block, UnetBasicBlock) for s in small_network(up_block="basic").stages)


def test_per_image_normalisation_ignores_brightness_and_contrast():
    net = small_network(pixel_normalisation="per_image")
    image, text = torch.rand(1, 1, 64, 64), torch.randn(1, 8, 32)
    torch.testing.assert_close(logits(net, image, text), logits(net, 0.5 * image + 0.2, text), atol=1e-4, rtol=0)
    flat = torch.full((1, 1, 64, 64), 0.3)  # zero variance: divided by 1, no NaN
    assert torch.isfinite(logits(net, flat, text)).all()


def test_resize_layout_is_the_largest_power_of_two_side_for_every_width():
    """For each width: c * s * s = width, s the largest power of two with s * s dividing the width
    and 3 * s * s <= width (the reference's 3x16x16, 6x8x8, 3x8x8 generalised)."""
    for width in range(3, 800):
        side = max(s for s in (1, 2, 4, 8, 16, 32) if width % (s * s) == 0 and 3 * s * s <= width)
        assert resize_layout(width) == (width // (side * side), side), width


def test_resize_pooling_layout_and_values():
    assert [resize_layout(w) for w in (768, 384, 192, 32, 16)] == [(3, 16), (6, 8), (3, 8), (8, 2), (4, 2)]
    with pytest.raises(ValueError, match="at least 3"):
        resize_layout(2)
    feats = torch.rand(2, 24, 32, 32)
    ones = torch.ones(2, 1, 32, 32)
    resized = foreground_vectors(feats, ones, [768], "resize")[0]
    averaged = foreground_vectors(feats, ones, [768], "average")[0]
    assert resized.shape == averaged.shape == (2, 768)
    assert not torch.allclose(resized, averaged)
    constant = foreground_vectors(torch.full((1, 24, 32, 32), 2.0), torch.ones(1, 1, 32, 32), [192], "resize")[0]
    torch.testing.assert_close(constant, torch.full((1, 192), 2.0))  # bilinear resizes keep a constant
    with pytest.raises(ValueError, match="foreground_pooling"):
        foreground_vectors(feats, ones, [768], "max")


def test_prototype_range_eps():
    v = torch.tensor([0.0, 1e-6, 2e-6])
    for eps, top in (("clamp", 1.0), ("add", 2.0 / 3.0)):
        proto = HistoricPrototype([3], range_eps=eps)
        proto.start_collecting()
        proto.observe([v[None]])
        proto.finish_collecting()
        assert math.isclose(float(proto.modulation(0)[2]), top, rel_tol=1e-4)


def test_sequence_positions_are_the_transformer_formula():
    codes = sequence_positions(50, 8, torch.device("cpu")).double()
    pos = torch.arange(50, dtype=torch.float64)[:, None]
    freq = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    torch.testing.assert_close(codes[:, 0::2], torch.sin(pos * freq), atol=1e-5, rtol=0)
    torch.testing.assert_close(codes[:, 1::2], torch.cos(pos * freq), atol=1e-5, rtol=0)


@pytest.mark.parametrize("key, value", [("position_codes", "3d"), ("up_block", "plain"), ("head_activation", "relu"),
                                        ("foreground_pooling", "max"), ("prototype_range_eps", "none"),
                                        ("pixel_normalisation", "minmax")])
def test_bad_values_are_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=f"model.{key} must be one of"):
        small_network(**{key: value})


def test_keys_work_as_overrides():
    overrides = [f"model.{k}={json.dumps(v)}" for k, v in REFERENCE_ARCHITECTURE.items()] + ["model.vision.stage_norms=false"]
    config = load_config(REPO / "configs" / "smoke.yaml", overrides).model
    assert {k: getattr(config, k) for k in REFERENCE_ARCHITECTURE} == REFERENCE_ARCHITECTURE
    assert config.vision.stage_norms is False


def test_stage_norms_false_gives_convnext_raw_stage_outputs(tmp_path):
    """The reference feeds ConvNeXt's `hidden_states[1:]`; the backbone class normalises them."""
    from transformers import AutoConfig, ConvNextModel

    folder = shared_path("configs", "convnext-tiny-224")
    hf = AutoConfig.from_pretrained(folder)
    hf.depths, hf.hidden_sizes = [1, 1, 1, 1], [8, 16, 24, 32]
    hf.save_pretrained(tmp_path)
    torch.manual_seed(0)
    model = ConvNextModel(hf).eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        raw = model(image, output_hidden_states=True).hidden_states[1:]
        for stage_norms in (True, False):
            config = ModelConfig(vision=VisionConfig("hf", str(tmp_path), False, stage_norms=stage_norms))
            encoder = build_network(config, text_dim=32).encoder
            encoder.backbone.load_state_dict(model.state_dict(), strict=False)
            feats = encoder(image)
            same = all(torch.allclose(f, r, atol=1e-6) for f, r in zip(feats, raw))
            assert same is (not stage_norms)
        # A reference checkpoint's encoder (Lightning wrapper `model.`, TeViaSeg `encoder.model.`)
        # loads under its own names; its final LayerNorm and the frozen BERT have no place here.
        net = build_network(ModelConfig(vision=VisionConfig("hf", str(tmp_path), False, stage_norms=False)), 32)
        state = {f"model.encoder.model.{k}": v for k, v in model.state_dict().items()}
        state["model.text_encoder.model.embeddings.word_embeddings.weight"] = torch.zeros(2, 2)
        missing = load_reference_state_dict(net, state)
        assert not any(k.startswith("encoder.") for k in missing)
        assert all(torch.allclose(f, r, atol=1e-6) for f, r in zip(net.encoder(image), raw))
    with pytest.raises(ValueError, match="Hugging Face backbones"):
        small_network(vision=VisionConfig("mobilenet_v2", "", False, stage_norms=False))


def test_model_json_without_the_new_keys_is_todays_network(tmp_path):
    """A model.json written before the options (the bundled model's up to 0.2.0) builds the
    project's defaults and gives the probabilities the code before the options gave (recorded
    from commit 610c19c): the bundled model with those keys taken out of its model.json."""
    import shutil

    from tevia.checkpoint import read_model_json
    from tevia.model_folders import resolve_model
    from tevia.inference.segmenter import Segmenter

    folder = tmp_path / "old-model-json"
    shutil.copytree(resolve_model("default"), folder)
    info = json.loads((folder / "model.json").read_text())
    info["config"] = {k: v for k, v in info["config"].items() if k not in REFERENCE_ARCHITECTURE}
    info["config"]["vision"] = {k: v for k, v in info["config"]["vision"].items() if k != "stage_norms"}
    (folder / "model.json").write_text(json.dumps(info))
    config, _ = read_model_json(folder)
    defaults = ModelConfig()
    assert all(getattr(config, k) == getattr(defaults, k) for k in REFERENCE_ARCHITECTURE)
    seg = Segmenter.load(folder, device="cpu")
    yy, xx = np.mgrid[0:128, 0:128] / 127.0
    image = (0.5 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy)).astype(np.float32)[None]
    probs = seg.predict(image, "Bilateral pulmonary infection, upper left lung.")[0]
    assert math.isclose(float(probs.mean()), 0.20367619, abs_tol=1e-5)
    np.testing.assert_allclose([probs[10, 20], probs[64, 64], probs[100, 30], probs[40, 110]],
                               [0.154972, 0.316547, 0.002221, 0.181972], atol=1e-5)
