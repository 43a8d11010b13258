"""The engine's fast paths (channels_last on CPU, torch's pixel_shuffle before the head, the head's
pooling as a depthwise convolution, cached position codes, fused AdamW) give the plain fp32 path's results within float tolerance, in
inference and in training, for a ConvNeXt (Hugging Face) and a MobileNetV2 encoder, and with the
reference code's architecture options (the `paper` preset's). The plain path is bench/plain_path.py,
the computation bench/bench_engine.py times as the reference code's way."""

import json
import sys

import numpy as np
import pytest
import torch

from tevia.config import ModelConfig, TextConfig, TrainConfig, VisionConfig
from tevia.inference.segmenter import Segmenter
from tevia.training.lightning_module import LitTeViA
from tevia.model.alignment import alignment_loss, foreground_vectors
from tevia.model.build import REFERENCE_ARCHITECTURE, build_network
from tevia.model.positions import cached_grid_positions, grid_positions

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from plain_path import plain_forward  # noqa: E402 (bench/ is not a package)

torch.set_num_threads(1)


def _convnext_folder(tmp_path):
    """A small ConvNeXt config (random weights): the paper's encoder family, 4 stages."""
    from transformers import ConvNextConfig

    config = ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], num_channels=3)
    config.save_pretrained(tmp_path / "convnext-small")
    return str(tmp_path / "convnext-small")


def _network(kind: str, tmp_path) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "convnext":
        config = ModelConfig(vision=VisionConfig("hf", _convnext_folder(tmp_path), False), text=TextConfig(max_tokens=8),
                             image_size=(64, 96), stage_tokens=[8, 4, 4])
    elif kind == "reference":
        config = ModelConfig(vision=VisionConfig("hf", _convnext_folder(tmp_path), False, stage_norms=False),
                             text=TextConfig(max_tokens=8), image_size=(64, 96), stage_tokens=[8, 4, 4],
                             **REFERENCE_ARCHITECTURE)
    else:
        config = ModelConfig(vision=VisionConfig("mobilenet_v2", "", False), text=TextConfig(max_tokens=8),
                             image_size=(64, 96), neck_channels=[16, 16, 32, 32], stage_tokens=[8, 4, 4])
    net = build_network(config, text_dim=32)
    proto = net.prototype  # switched on, as after the warm-up
    proto.start_collecting()
    proto.observe([torch.rand(2, w) * 3 for w in proto.widths])
    proto.finish_collecting()
    return net


@pytest.mark.parametrize("kind", ["convnext", "mobilenet", "reference"])
def test_inference_matches_plain_path(kind, tmp_path):
    net = _network(kind, tmp_path).eval()
    image, text = torch.rand(3, 1, 64, 96), torch.randn(1, 8, 32)
    with torch.inference_mode():
        feats = net.encode_image(image)
        fast = net.decode(feats, text)
        plain = plain_forward(net, image, text)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in feats)  # the fast path is in use
    torch.testing.assert_close(torch.sigmoid(fast.logits), torch.sigmoid(plain.logits), atol=1e-4, rtol=0)
    torch.testing.assert_close(fast.head_features, plain.head_features, atol=1e-4, rtol=1e-4)
    for a, b in zip(fast.stage_text, plain.stage_text):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", ["convnext", "mobilenet", "reference"])
@pytest.mark.parametrize("dtype, grad_tolerance", [(torch.float64, 1e-9), (torch.float32, 1e-2)])
def test_training_step_matches_plain_path(kind, dtype, grad_tolerance, tmp_path):
    """Loss and gradients of DiceCE + 0.1 x alignment agree with the plain path: to 1e-9 in
    float64 (the same computation), within float32 rounding in float32 (a deep random-weight
    network with batch statistics amplifies rounding in the first layers' gradients to ~1e-3 of the largest gradient)."""
    from monai.losses import DiceCELoss

    gen = torch.Generator().manual_seed(1)
    image, text = torch.rand(2, 1, 64, 96, generator=gen, dtype=dtype), torch.randn(2, 8, 32, generator=gen, dtype=dtype)
    mask = torch.zeros(2, 1, 64, 96, dtype=dtype)
    mask[:, :, 10:40, 20:70] = 1
    loss_fn = DiceCELoss(sigmoid=True)
    results = []
    for fast in (True, False):
        net = _network(kind, tmp_path).to(dtype).train()
        out = net(image, text) if fast else plain_forward(net, image, text)
        fg = foreground_vectors(out.head_features, mask, net.stage_widths, net.foreground_pooling)
        loss = loss_fn(out.logits, mask) + 0.1 * alignment_loss(out.stage_text, fg, mask)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    (loss_fast, g_fast), (loss_plain, g_plain) = results
    torch.testing.assert_close(loss_fast, loss_plain, atol=1e-5, rtol=1e-5)
    assert g_fast.keys() == g_plain.keys() and len(g_fast) > 20
    largest = max(float(g.abs().max()) for g in g_plain.values())
    for name in g_fast:
        torch.testing.assert_close(g_fast[name], g_plain[name], rtol=grad_tolerance, atol=grad_tolerance * largest,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_cached_positions_equal_fresh_ones_and_serve_training_after_inference():
    first = cached_grid_positions("2d", 7, 9, 24, torch.device("cpu"))
    torch.testing.assert_close(first, grid_positions("2d", 7, 9, 24, torch.device("cpu")), atol=0, rtol=0)
    assert cached_grid_positions("2d", 7, 9, 24, torch.device("cpu")) is first
    with torch.inference_mode():
        in_inference = cached_grid_positions("1d", 5, 6, 16, torch.device("cpu"))
    assert not in_inference.is_inference()
    weight = torch.ones(16, requires_grad=True)
    (in_inference * weight).pow(2).sum().backward()  # an inference tensor could not be saved for backward
    assert weight.grad is not None


def test_segmenter_matches_plain_path(tiny_model_dir):
    """The Segmenter's probabilities on a saved model equal the plain path's sigmoid."""
    seg = Segmenter.load(tiny_model_dir, device="cpu")
    h, w = seg.spec.image_size
    images = np.random.default_rng(0).random((2, h, w), dtype=np.float32)
    prompt = json.loads((tiny_model_dir / "model.json").read_text())["example_prompts"][0]
    probs = seg.predict(images, prompt)
    with torch.inference_mode():
        plain = plain_forward(seg.network, torch.from_numpy(images)[:, None], seg.encode_text([prompt]))
    assert probs.shape == (2, h, w)
    np.testing.assert_allclose(probs, torch.sigmoid(plain.logits[:, 0]).numpy(), atol=1e-4, rtol=0)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_optimiser_step_matches_per_tensor_adamw(tmp_path):
    """A LitTeViA training step with its AdamW (the fused kernel on CPU) updates the weights as
    the per-tensor AdamW loop does."""
    text = "lower left lung infection"
    params = []
    for fast in (True, False):
        net = _network("mobilenet", tmp_path).train()
        lit = LitTeViA(net, torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(3)), {text: 0},
                       TrainConfig(augment=False))
        optimiser = lit.configure_optimizers()["optimizer"]
        if fast:
            assert optimiser.defaults["fused"]
        else:
            optimiser = torch.optim.AdamW(optimiser.param_groups[0]["params"], lr=lit.config.lr,
                                          weight_decay=lit.config.weight_decay, foreach=False)
        mask = torch.zeros(2, 1, 64, 96)
        mask[:, :, 8:30, 10:50] = 1
        batch = {"image": torch.rand(2, 1, 64, 96, generator=torch.Generator().manual_seed(4)), "mask": mask,
                 "text": [text, text]}
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        lit.training_step(batch, 0).backward()
        optimiser.step()
        assert all(not torch.equal(before[n], p) for n, p in net.named_parameters() if p.grad is not None)
        params.append({n: p.detach().clone() for n, p in net.named_parameters()})
    fast, plain = params
    for name in plain:
        torch.testing.assert_close(fast[name], plain[name], atol=1e-7, rtol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
