"""The TeViA network: shapes for the paper configuration, alignment gradients, prototype."""

import pytest
import torch

from conftest import shared_path
from tevia.config import ModelConfig, TextConfig, VisionConfig
from tevia.model.alignment import alignment_loss, foreground_vectors
from tevia.model.build import build_network, build_text_encoder
from tevia.model.prototype import HistoricPrototype

torch.set_num_threads(1)


def small_network(**kw):
    config = ModelConfig(vision=VisionConfig("mobilenet_v2", "", False), text=TextConfig(max_tokens=8),
                         image_size=(64, 64), neck_channels=[16, 16, 32, 32], stage_tokens=[8, 4, 4], **kw)
    torch.manual_seed(0)
    return build_network(config, text_dim=32)


@pytest.mark.parametrize("size", [(224, 224), (256, 320)])
def test_paper_configuration_shapes(size):
    """ConvNeXt-tiny + CXR-BERT (random weights, from the shared configs) at 224 and at another size."""
    vision = str(shared_path("configs", "convnext-tiny-224"))
    text = str(shared_path("configs", "BiomedVLP-CXR-BERT-specialized"))
    config = ModelConfig(vision=VisionConfig("hf", vision, False), text=TextConfig(text, False, 24), image_size=size)
    encoder = build_text_encoder(config)
    assert encoder.hidden_size == 768
    net = build_network(config, encoder.hidden_size).eval()
    assert net.stage_widths == [768, 384, 192]
    emb = encoder(["Bilateral pulmonary infection, two infected areas."])
    assert emb.shape == (1, 24, 768)
    with torch.no_grad():
        out = net(torch.rand(1, 1, *size), emb)
    assert out.logits.shape == (1, 1, *size)
    assert out.head_features.shape == (1, 24, *size)
    assert [tuple(t.shape) for t in out.stage_text] == [(1, 24, 768), (1, 12, 384), (1, 9, 192)]


def test_bad_inputs_are_refused():
    net = small_network()
    with pytest.raises(ValueError, match="divisible by 32"):
        net(torch.rand(1, 1, 60, 64), torch.randn(1, 8, 32))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        net(torch.rand(1, 3, 64, 64), torch.randn(1, 8, 32))
    with pytest.raises(ValueError, match="in_channels"):
        small_network(in_channels=2)


def test_alignment_gradients_reach_text_projections_only():
    net = small_network().train()
    image = torch.rand(2, 1, 64, 64)
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 10:40, 5:30] = 1
    out = net(image, torch.randn(2, 8, 32))
    loss = alignment_loss(out.stage_text, net.foreground(out, mask), mask)
    assert loss.item() > 0
    loss.backward()
    for stage in net.stages:
        grad = stage.text_projection.proj.weight.grad
        assert grad is not None and grad.abs().sum() > 0
    # The visual side is the (detached) target: the head's upsampling, which computes the
    # foreground features, the decoder's visual layers and the encoder get no gradient from it.
    learning = {name for name, p in net.named_parameters() if p.grad is not None}
    assert learning == {name for name, _ in net.named_parameters() if ".text_projection." in name}


def test_alignment_ignores_empty_masks():
    feats = torch.rand(2, 4, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    fg = foreground_vectors(feats, mask, [16])
    assert alignment_loss([torch.rand(2, 3, 16)], fg, mask).item() == 0.0


def test_alignment_counts_an_empty_mask_as_the_reference_does_when_asked():
    """skip_empty=False: a sample without foreground has cosine 0 (a constant 1 in the mean,
    as in the reference); True leaves it out."""
    text = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (B=2, 1 token, 2)
    foreground = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # the second sample's mask is empty
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, :, :2] = 1
    one_minus_cos = 1.0 - 2**-0.5
    assert alignment_loss([text], [foreground], mask, skip_empty=True).item() == pytest.approx(one_minus_cos)
    assert alignment_loss([text], [foreground], mask, skip_empty=False).item() == pytest.approx((one_minus_cos + 1) / 2)


def test_prototype_buffers_keep_their_dtypes_through_casts():
    """A cast of the network (double, half) leaves the prototype's vectors float32 and its state
    and count integers, so checkpoints hold the same tensors whatever the precision."""
    proto = HistoricPrototype([2, 3]).double()
    assert proto.state.dtype == proto.count.dtype == torch.long
    assert {proto.vector(i).dtype for i in range(2)} == {torch.float32}
    proto = proto.half()
    assert proto.state.dtype == torch.long and proto.vector(1).dtype == torch.float32


@pytest.mark.parametrize("momentum", [1.0, -0.1, 1.5])
def test_a_momentum_that_would_freeze_or_diverge_the_prototype_is_refused(momentum):
    with pytest.raises(ValueError, match=rf"momentum must be in \[0, 1\), got {momentum}"):
        HistoricPrototype([2], momentum=momentum)


def test_prototype_warmup_mean_then_momentum():
    proto = HistoricPrototype([2, 3], momentum=0.9)
    proto.observe([torch.ones(1, 2), torch.ones(1, 3)])  # off: ignored
    assert not proto.active and proto.modulation(0) is None
    proto.start_collecting()
    proto.observe([torch.tensor([[1.0, 3.0], [3.0, 5.0]]), torch.tensor([[0.0, 1.0, 2.0]])])
    proto.observe([torch.tensor([[4.0, 6.0]]), torch.tensor([[2.0, 3.0, 4.0]])])
    proto.finish_collecting()
    assert proto.active
    torch.testing.assert_close(proto.vector(0), torch.tensor([3.0, 5.0]))  # mean of batch means (2,4) and (4,6)
    torch.testing.assert_close(proto.vector(1), torch.tensor([1.0, 2.0, 3.0]))
    proto.observe([torch.tensor([[13.0, 15.0]]), torch.tensor([[1.0, 2.0, 13.0]])])
    torch.testing.assert_close(proto.vector(0), torch.tensor([0.9 * 3 + 0.1 * 13, 0.9 * 5 + 0.1 * 15]))
    torch.testing.assert_close(proto.vector(1), torch.tensor([1.0, 2.0, 0.9 * 3 + 0.1 * 13]))
    torch.testing.assert_close(proto.modulation(1), torch.tensor([0.0, 1.0 / 3.0, 1.0]))


def test_prototype_is_used_at_inference():
    net = small_network().eval()
    image, text = torch.rand(1, 1, 64, 64), torch.randn(1, 8, 32)
    with torch.no_grad():
        before = net(image, text).logits
        net.prototype.start_collecting()
        net.prototype.observe([torch.rand(1, w) * 5 for w in net.stage_widths])
        net.prototype.finish_collecting()
        after = net(image, text).logits
    assert not torch.allclose(before, after)
