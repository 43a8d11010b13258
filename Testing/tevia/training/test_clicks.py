"""Corrective clicks in the engine (issue 17), on real QaTa images and the bundled model.

The click model is the bundled default, which carries the click injection fine-tuned by
configs/default-qata-clicks.yaml since 0.3.0; the text-only reference is the same weights in a
network built without click inputs (conftest.build_text_only_default).
"""
import dataclasses

import numpy as np
import pytest
import torch

from conftest import TESTDATA, build_untrained_click_model
from tevia.training.click_simulation import next_click
from tevia.training.click_training import simulate_click_maps
from tevia.config import TrainConfig
from tevia.training.data.dataset import CSVSegmentationDataset
from tevia.inference.segmenter import Segmenter
from tevia.training.lightning_module import LitTeViA
from tevia.model.clicks import Click, render_clicks
from tevia.model_folders import bundled_models_dir

SAMPLES = TESTDATA / "qata_samples"


def _samples(count: int | None = 4) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(image 128x128 in [0, 1], ground truth 128x128 bool, description) of the first samples, as
    the training data set gives them (all of them for count None)."""
    data = CSVSegmentationDataset(SAMPLES, "samples", image_size=(128, 128))
    return [(data[i]["image"][0].numpy(), data[i]["mask"][0].numpy() > 0.5, data.texts[i])
            for i in range(len(data) if count is None else count)]


@pytest.fixture(scope="module")
def text_only(text_only_default_dir) -> Segmenter:
    """The default's weights in a network without click inputs."""
    return Segmenter.load(text_only_default_dir, device="cpu")


@pytest.fixture(scope="module")
def clicker(click_model_dir) -> Segmenter:
    return Segmenter.load(click_model_dir, device="cpu")


def test_next_click_goes_to_the_centre_of_the_largest_missed_region():
    _, truth, _ = _samples(1)[0]
    click = next_click(np.zeros_like(truth), truth)
    assert click.positive
    assert truth[int(click.row), int(click.col)]
    # The centre: every pixel within 3 px of it is target too.
    r, c = int(click.row), int(click.col)
    assert truth[r - 3:r + 4, c - 3:c + 4].all()


def test_next_click_is_negative_in_a_larger_false_region_and_none_when_exact():
    _, truth, _ = _samples(1)[0]
    prediction = truth.copy()
    prediction[:30, :30] |= ~truth[:30, :30]  # a false region in the top-left corner
    prediction[truth] = True
    click = next_click(prediction, truth)
    assert not click.positive and click.row < 30 and click.col < 30 and not truth[int(click.row), int(click.col)]
    assert next_click(truth, truth) is None
    with pytest.raises(ValueError, match="one shape"):
        next_click(truth[:10], truth)


def test_untrained_click_injection_computes_exactly_the_text_only_model(text_only, tmp_path):
    """Zero-initialised: a model fine-tuned from a text-only one starts identical to it, clicks or not."""
    untrained = Segmenter.load(build_untrained_click_model(tmp_path / "untrained"), device="cpu")
    images = np.stack([s[0] for s in _samples(2)])
    text = text_only.encode_text(["Bilateral pulmonary infection, two infected areas, all left lung and all right lung."])
    expected = text_only.decode(text_only.encode_images(images), text)
    features = untrained.encode_images(images)
    clicks = [[Click(40, 40, True), Click(90, 30, False)], [Click(64, 64, True)]]
    assert torch.equal(untrained.decode(features, text), expected)
    assert torch.equal(untrained.decode(features, text, clicks), expected)


def _network_from(folder, **clicks):
    """The default's architecture with the given click settings, loaded from a model folder the
    way `tevia train --init` loads it (an injection of another shape, or none, is left out)."""
    from tevia.checkpoint import load_network_weights, read_model_json
    from tevia.model.build import build_network
    from tevia.model_folders import resolve_model

    config, _ = read_model_json(resolve_model("default"))
    network = build_network(dataclasses.replace(config, click_inputs=True, **clicks), text_dim=384,
                            pretrained_vision=False)
    load_network_weights(network, folder, read_model_json(folder)[1], optional_modules=("clicks.",))
    return network


def _two_images_and_clicks(text_only):
    samples = _samples(2)
    images = torch.from_numpy(np.stack([s[0] for s in samples]))[:, None]
    return images, text_only.encode_text([samples[0][2]]), render_clicks([[Click(64, 64, True)]] * 2, (128, 128))


def test_a_context_injection_starts_at_the_text_only_output_and_reads_the_image(text_only, text_only_default_dir):
    """model.click_context: from a model without clicks the injection starts at zero (exactly the
    text-only output, clicks or not); once trained, the same click adds a different correction on
    different images (it reads the decoder's features), which the click-maps-only injection cannot."""
    network = _network_from(text_only_default_dir, click_context=True)
    assert network.clicks.levels[0][0].in_channels == 2 + network.stage_widths[0]
    images, text, maps = _two_images_and_clicks(text_only)
    with torch.no_grad():
        feats = network.encode_image(images)
        expected = text_only.network.decode(feats, text).logits
        assert torch.equal(network.decode(feats, text, maps).logits, expected)
        for level in network.clicks.levels:  # as if trained: the last convolution is no longer zero
            torch.nn.init.normal_(level[-1].weight, std=0.1)
        added = network.decode(feats, text, maps).logits - expected
        assert torch.equal(network.decode(feats, text, torch.zeros_like(maps)).logits, expected)
    assert not torch.allclose(added[0], added[1], atol=1e-3)


def test_an_injection_of_another_shape_is_left_out_whole(text_only, click_model_dir):
    """A click-maps-only network initialised from the bundled default (whose injection reads the
    decoder's features: other shapes) keeps its own zero injection, not a mix of the two."""
    network = _network_from(click_model_dir, click_context=False)
    images, text, maps = _two_images_and_clicks(text_only)
    with torch.no_grad():
        feats = network.encode_image(images)
        assert torch.equal(network.decode(feats, text, maps).logits, text_only.network.decode(feats, text).logits)


def test_the_bundled_default_without_clicks_gives_exactly_the_text_only_probabilities(text_only, clicker):
    """On every committed QaTa sample, bit for bit: the click injection costs text-only use nothing."""
    assert clicker.spec.click_inputs and clicker.network.clicks is not None and text_only.network.clicks is None
    assert clicker.folder == bundled_models_dir() / "default"
    own, theirs = clicker.network.state_dict(), text_only.network.state_dict()
    assert {k for k in own if not k.startswith("clicks.")} == set(theirs)
    assert all(torch.equal(own[k], theirs[k]) for k in theirs), "the same weights, less the injection"
    samples = _samples(None)
    images = np.stack([s[0] for s in samples])
    text = text_only.encode_text([s[2] for s in samples])
    expected = text_only.decode(text_only.encode_images(images), text)
    assert len(samples) == 20 and (expected > 0.5).any()
    features = clicker.encode_images(images)
    assert torch.equal(clicker.decode(features, text), expected)
    assert torch.equal(clicker.decode(features, text, [[] for _ in samples]), expected)


def test_without_clicks_in_a_batch_with_clicks_an_image_gets_its_text_only_output(text_only, clicker):
    samples = _samples(3)
    images = np.stack([s[0] for s in samples])
    text = text_only.encode_text([s[2] for s in samples])
    expected = text_only.decode(text_only.encode_images(images), text)
    features = clicker.encode_images(images)
    # An image without clicks in a batch with clicks also gets exactly its text-only output.
    mixed = clicker.decode(features, text, [[Click(64, 64, True)], [], []])
    assert torch.equal(mixed[1:], expected[1:])
    assert not torch.equal(mixed[0], expected[0])


def _click_effect(clicker: Segmenter, sample, prediction_of, wrong_text: str | None = None):
    image, truth, description = sample
    features = clicker.encode_images(image[None])
    text = clicker.encode_text([wrong_text or description])
    before = clicker.decode(features, text)[0].numpy() > 0.5
    click = prediction_of(before, truth)
    after = clicker.decode(features, text, [[click]])[0].numpy() > 0.5
    return before, after, click


def test_a_positive_click_in_a_missed_region_grows_the_mask_there(clicker):
    """On each of 8 real X-rays the mask grows into the region the click marks as missed; the
    clicked pixel itself joins the mask on all but at most one (the model is 2D and soft: one
    click is a hint, not a paint stroke)."""
    grown = covered = 0
    for sample in _samples(8):
        truth = sample[1]

        def missed_click(before, truth):
            return next_click(before & truth, truth)  # only the misses: a positive click

        before, after, click = _click_effect(clicker, sample, missed_click)
        if click is None:
            continue
        assert click.positive
        missed = truth & ~before
        assert (after & missed).sum() > 0, "the mask must grow into the missed region"
        assert after.sum() > before.sum()
        covered += int(after[int(click.row), int(click.col)])
        grown += 1
    assert grown >= 6 and covered >= grown - 1


def test_a_negative_click_in_a_false_region_removes_it(clicker):
    # A prompt for the other lung makes the model mark a region that is not the target.
    image, truth, description = _samples(1)[0]
    assert "left" in description
    wrong = description.replace("left", "right")

    def false_click(before, truth):
        return next_click(before | truth, truth)  # only the false regions: a negative click

    before, after, click = _click_effect(clicker, (image, truth, description), false_click, wrong)
    assert click is not None and not click.positive
    false = before & ~truth
    assert not after[int(click.row), int(click.col)], "the clicked pixel must leave the mask"
    assert (after & false).sum() < false.sum()


def test_clicks_are_refused_by_a_text_only_model_and_outside_the_image(text_only, clicker):
    features = text_only.encode_images(_samples(1)[0][0][None])
    text = text_only.encode_text(["lung"])
    with pytest.raises(ValueError, match="takes no clicks"):
        text_only.decode(features, text, [[Click(1, 1, True)]])
    with pytest.raises(ValueError, match="outside the 128 x 128 image"):
        clicker.decode(features, text, [[Click(130, 1, True)]])
    with pytest.raises(ValueError, match="one list per image"):
        clicker.decode(features, text, [[], []])


def test_click_training_trains_only_the_injection_and_keeps_the_text_only_output(clicker):
    network = clicker.network
    before = {k: v.clone() for k, v in network.state_dict().items()}
    samples = _samples(2)
    image = torch.from_numpy(np.stack([s[0] for s in samples]))[:, None]
    mask = torch.from_numpy(np.stack([s[1] for s in samples])).float()[:, None]
    texts = [s[2] for s in samples]
    table = clicker.encode_text(texts)
    lit = LitTeViA(network, table, {t: i for i, t in enumerate(texts)},
                   TrainConfig(train_only_clicks=True, augment=False, max_clicks=2))
    optimiser = lit.configure_optimizers()["optimizer"]
    try:
        loss = lit.training_step({"image": image, "mask": mask, "text": texts}, 0)
        loss.backward()
        optimiser.step()
        changed = {k for k, v in network.state_dict().items() if not torch.equal(v, before[k])}
        assert changed and all(k.startswith("clicks.") for k in changed)
    finally:
        network.load_state_dict(before)
        network.eval()
        for p in network.parameters():
            p.requires_grad_(True)


def test_simulated_click_maps_hold_the_asked_number_of_clicks(clicker):
    samples = _samples(2)
    image = torch.from_numpy(np.stack([s[0] for s in samples]))[:, None]
    mask = torch.from_numpy(np.stack([s[1] for s in samples])).float()[:, None]
    text = clicker.encode_text([s[2] for s in samples])
    with torch.no_grad():
        feats = clicker.network.encode_image(image)
        logits = clicker.network.decode(feats, text).logits
    maps = simulate_click_maps(clicker.network, feats, text, mask, logits, torch.tensor([1, 3]))
    single = render_clicks([[Click(64, 64, True)]], (128, 128))
    disc = int(single.sum())
    assert 0 < maps[0].sum() <= disc  # one click
    assert disc < maps[1].sum() <= 3 * disc  # three clicks (discs may overlap)


def test_joint_click_training_adds_the_click_pass_loss_and_trains_the_whole_network(tmp_path):
    model = Segmenter.load(build_untrained_click_model(tmp_path / "untrained"), device="cpu")
    samples = _samples(2)
    image = torch.from_numpy(np.stack([s[0] for s in samples]))[:, None]
    mask = torch.from_numpy(np.stack([s[1] for s in samples])).float()[:, None]
    texts = [s[2] for s in samples]
    lit = LitTeViA(model.network.train(), model.encode_text(texts), {t: i for i, t in enumerate(texts)},
                   TrainConfig(augment=False, max_clicks=2))
    loss = lit.training_step({"image": image, "mask": mask, "text": texts}, 0)
    loss.backward()
    grads = {n for n, p in model.network.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("clicks.") for n in grads) and any(n.startswith("stages.") for n in grads)
    assert any(n.startswith("encoder.") for n in grads)
