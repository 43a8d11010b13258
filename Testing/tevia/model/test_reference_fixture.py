"""The `paper` preset computes what the reference code computes: the reference's own weights
(under its names), inputs and outputs from ../shared/data/reference-fixture (its README), from
the decoder on, with the historic prototype off and on, matched to 1e-5."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import shared_path
from tevia.model.alignment import alignment_loss
from tevia.model.build import MODEL_PRESETS, build_network
from tevia.model.reference_names import load_reference_state_dict, reference_to_project

torch.set_num_threads(1)
TOLERANCE = 1e-5


def fixture_weights(folder) -> dict[str, torch.Tensor]:
    """The reference's state dict: int8 x 2 ** exponent (exact in fp32), plus the integer buffers."""
    manifest = json.loads((folder / "manifest.json").read_text())
    stored = load_file(folder / "reference_weights.safetensors")
    state = {k: v.float() * 2.0 ** manifest["scale_exponent"][k] for k, v in stored.items()}
    state.update({k: torch.tensor(v) for k, v in manifest["integer_buffers"].items()})
    return state


def paper_network(**changes):
    """The `paper` preset with random ConvNeXt-tiny weights from the shared config (the fixture
    starts at the decoder, so the encoder is bypassed)."""
    config = MODEL_PRESETS["paper"]()
    config.vision = dataclasses.replace(config.vision, source=str(shared_path("configs", "convnext-tiny-224")),
                                        pretrained=False)
    return build_network(dataclasses.replace(config, **changes), text_dim=768)


@pytest.fixture(scope="module")
def fixture():
    folder = shared_path("reference-fixture")
    inputs = {k: v.float() for k, v in load_file(folder / "inputs.safetensors").items()}
    return fixture_weights(folder), inputs, load_file(folder / "expected.safetensors")


@pytest.fixture(scope="module")
def loaded(fixture):
    weights, _, _ = fixture
    net = paper_network().eval()
    missing = load_reference_state_dict(net, weights)
    assert missing and all(k.startswith(("encoder.", "prototype.", "pixel_")) for k in missing), missing
    return net


def run(net, inputs):
    """Probabilities, normalised stage text and foreground vectors, raw foreground vectors."""
    feats = [inputs[f"feature{i}"] for i in range(4)]
    with torch.no_grad():
        out = net.decode(feats, inputs["text"])
        fg = net.foreground(out, inputs["gt"])
    txt = [F.normalize(t.mean(1), dim=-1) for t in out.stage_text]
    return torch.sigmoid(out.logits), txt, [F.normalize(f, dim=-1) for f in fg], fg


def assert_matches(name, actual, expected):
    diff = float((actual - expected).abs().max())
    assert diff <= TOLERANCE, f"{name}: max |difference| {diff:.2e} > {TOLERANCE}"


def switch_prototype_on(net, vectors):
    proto = net.prototype
    proto.start_collecting()
    proto.observe([v[None] for v in vectors])
    proto.finish_collecting()
    assert proto.active


def test_prototype_off_matches_reference(loaded, fixture):
    _, inputs, expected = fixture
    assert not loaded.prototype.active
    probs, txt, vis, _ = run(loaded, inputs)
    assert_matches("off.out", probs, expected["off.out"])
    for i in range(3):
        assert_matches(f"off.txt{i}", txt[i], expected[f"off.txt{i}"])
        assert_matches(f"off.vis{i}", vis[i], expected[f"off.vis{i}"])


def test_prototype_on_and_its_momentum_step_match_reference(fixture):
    weights, inputs, expected = fixture
    net = paper_network().eval()
    load_reference_state_dict(net, weights)
    switch_prototype_on(net, [inputs[f"proto{i}"] for i in range(3)])
    probs, txt, vis, fg = run(net, inputs)
    assert_matches("on.out", probs, expected["on.out"])
    assert float((expected["on.out"] - expected["off.out"]).abs().max()) > 100 * TOLERANCE  # the prototype matters
    for i in range(3):
        assert_matches(f"on.txt{i}", txt[i], expected[f"on.txt{i}"])
        assert_matches(f"on.vis{i}", vis[i], expected[f"on.vis{i}"])
    net.prototype.observe(fg)  # the training step's update (batch mean, momentum 0.99)
    for i in range(3):
        assert_matches(f"on.proto_after{i}", net.prototype.vector(i), expected[f"on.proto_after{i}"])


@pytest.mark.parametrize("key, value", [
    ("text_projection_gelu", False), ("attention_output_norms", False), ("text_key_positions", False),
    ("position_codes", "2d"), ("head_activation", "gelu"),
])
def test_each_project_choice_departs_from_reference(fixture, key, value):
    """Turning any one reference choice back to the project's default moves the probabilities
    past the tolerance: the fixture catches the loss of each (text key positions move them
    least, 1.5e-5: the cross-attention enters scaled by 0.01)."""
    weights, inputs, expected = fixture
    net = paper_network(**{key: value}).eval()
    if key == "attention_output_norms":  # those norms' weights have no place then
        weights = {k: v for k, v in weights.items() if "_attn_norm." not in k}
    load_reference_state_dict(net, weights)
    probs, _, _, _ = run(net, inputs)
    assert float((probs - expected["off.out"]).abs().max()) > TOLERANCE


def test_foreground_pooling_average_departs_from_reference(loaded, fixture):
    _, inputs, expected = fixture
    loaded.foreground_pooling = "average"
    try:
        _, _, vis, _ = run(loaded, inputs)
    finally:
        loaded.foreground_pooling = "resize"
    assert float((vis[0] - expected["off.vis0"]).abs().max()) > 10 * TOLERANCE


def test_weights_that_do_not_fit_are_refused(fixture):
    weights, _, _ = fixture
    with pytest.raises(ValueError, match="no counterpart"):
        reference_to_project({"decoder16.guide_layer.unknown": torch.zeros(1)})
    net = paper_network(attention_output_norms=False)  # no place for self_attn_norm / cross_attn_norm
    with pytest.raises(ValueError, match="no place in this network"):
        load_reference_state_dict(net, weights)


def reference_alignment(expected, run_name: str) -> torch.Tensor:
    """The reference's distance loss on its own vectors: mean over stages and samples of
    1 - cos(text, foreground); both sides are stored L2-normalised, so cos is their dot product."""
    return torch.stack([1.0 - (expected[f"{run_name}.txt{i}"] * expected[f"{run_name}.vis{i}"]).sum(-1)
                        for i in range(3)]).mean()


@pytest.mark.parametrize("skip_empty", [True, False])
def test_alignment_loss_matches_reference(loaded, fixture, skip_empty):
    """The project's alignment loss over its own decode of the fixture equals the reference's
    value computed from the reference's text and foreground vectors."""
    _, inputs, expected = fixture
    assert bool((inputs["gt"].flatten(1).amax(1) > 0).all())  # no empty mask: both conventions agree
    feats = [inputs[f"feature{i}"] for i in range(4)]
    with torch.no_grad():
        out = loaded.decode(feats, inputs["text"])
        loss = alignment_loss(out.stage_text, loaded.foreground(out, inputs["gt"]), inputs["gt"], skip_empty)
    reference = reference_alignment(expected, "off")
    assert 0.05 < float(reference) < 1.95  # a value where 1 - cos and its mutations (1 + cos, cos, ...) differ
    assert_matches("alignment loss", loss, reference)


def test_one_step_on_the_text_projections_raises_the_cosine(fixture):
    """One AdamW step (the training's lr and weight decay) on the text projections alone, driven
    by the alignment loss, brings every stage's text closer to the foreground."""
    weights, inputs, _ = fixture
    net = paper_network().eval()
    load_reference_state_dict(net, weights)
    feats = [inputs[f"feature{i}"] for i in range(4)]

    def cosines():
        out = net.decode(feats, inputs["text"])
        fg = net.foreground(out, inputs["gt"])
        return out, torch.stack([F.cosine_similarity(t.mean(1), f, dim=-1) for t, f in zip(out.stage_text, fg)])

    params = [p for name, p in net.named_parameters() if ".text_projection." in name]
    for p in net.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW(params, lr=3e-4, weight_decay=1e-2)
    out, before = cosines()
    alignment_loss(out.stage_text, net.foreground(out, inputs["gt"]), inputs["gt"]).backward()
    optimiser.step()
    with torch.no_grad():
        _, after = cosines()
    gain = after - before.detach()
    assert bool((gain > 1e-2).all()), f"cosine change per stage and sample: {gain.tolist()}"
