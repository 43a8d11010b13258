"""The training options where the reference code trains differently (docs/FIDELITY.md): each
changes what training does, bad values are refused, and all of them, with the reference's
architecture keys, run through `tevia train` and come back in the exported model."""

import json

import pytest
import torch
from monai.losses import DiceCELoss, DiceLoss

from conftest import REPO, TESTDATA
from tevia.training.augment import augment, zoom_batch
from tevia.commands.cli import main as cli_main
from tevia.config import TrainConfig, load_config
from tevia.model.alignment import alignment_loss
from tevia.model.build import REFERENCE_ARCHITECTURE

torch.set_num_threads(1)


def test_alignment_counts_empty_masks_only_when_asked():
    text = [torch.randn(2, 3, 8)]
    fg = [torch.rand(2, 8)]
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, :, 1:3, 1:3] = 1  # sample 1 is empty (its foreground vector would be 0)
    fg[0][1] = 0
    skip = alignment_loss(text, fg, mask)
    include = alignment_loss(text, fg, mask, skip_empty=False)
    torch.testing.assert_close(include, (skip + 1.0) / 2)  # the empty sample adds 1 - cos = 1


def test_zoom_magnifies_about_the_centre_and_keeps_the_size():
    mask = torch.zeros(3, 1, 64, 64)
    mask[:, :, 24:40, 24:40] = 1
    image = mask.clone().expand(-1, 1, -1, -1) * 0.8
    g = torch.Generator().manual_seed(0)
    zoomed_image, zoomed_mask = zoom_batch(image, mask, g, prob=1.0, min_zoom=1.2, max_zoom=1.2)
    assert zoomed_mask.shape == mask.shape and set(zoomed_mask.unique().tolist()) <= {0.0, 1.0}
    assert abs(float(zoomed_mask.sum() / mask.sum()) - 1.44) < 0.15
    assert float(zoomed_image.min()) >= 0 and float(zoomed_image.max()) <= 1
    untouched = zoom_batch(image, mask, g, prob=0.0)
    assert untouched[0] is image and untouched[1] is mask
    rates = [bool((zoom_batch(image[:1], mask[:1], g)[1] != mask[:1]).any()) for _ in range(300)]
    assert 0.04 < sum(rates) / len(rates) < 0.18  # about one image in ten, as the reference's prob=0.1
    with pytest.raises(ValueError, match="train.augmentation must be one of"):
        augment("flip", image, mask)


def test_bad_training_choices_are_refused_at_load():
    for key, value in (("loss", "ce"), ("augmentation", "mixup"), ("checkpoint_monitor", "val_iou")):
        with pytest.raises(ValueError, match=f"train.{key} must be one of"):
            load_config(REPO / "configs" / "smoke.yaml", [f"train.{key}={value}"])


def test_loss_choice_is_the_loss_the_step_uses(tiny_model_dir):
    from tevia.inference.segmenter import Segmenter
    from tevia.training.lightning_module import LitTeViA

    seg = Segmenter.load(tiny_model_dir, device="cpu")
    texts = ["left lung"]
    table = seg.encode_text(texts).cpu()
    assert isinstance(LitTeViA(seg.network, table, {"left lung": 0}, TrainConfig()).loss_fn, DiceCELoss)
    lit = LitTeViA(seg.network, table, {"left lung": 0}, TrainConfig(loss="dice", augment=False, alignment_weight=0.0))
    assert isinstance(lit.loss_fn, DiceLoss)
    h, w = seg.spec.image_size
    seg.network.eval()  # batch norm on its running statistics in both computations
    image, mask = torch.rand(2, 1, h, w), (torch.rand(2, 1, h, w) > 0.5).float()
    loss = lit.training_step({"image": image, "mask": mask, "text": texts * 2}, 0)
    with torch.no_grad():
        expected = DiceLoss(sigmoid=True)(seg.network(image, table.expand(2, -1, -1)).logits, mask)
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=0)


def test_reference_options_train_end_to_end(tmp_path):
    """Every training option at the reference's value and the reference's architecture keys
    (the small encoder has no stage norms to drop) as `tevia train` overrides."""
    out = tmp_path / "run"
    model = [f"model.{k}={json.dumps(v)}" for k, v in REFERENCE_ARCHITECTURE.items()]
    train = ["train.loss=dice", "train.alignment_skip_empty=false", "train.augmentation=zoom",
             "train.checkpoint_monitor=val_loss"]
    assert cli_main(["train", "--config", str(REPO / "configs" / "smoke.yaml"), f"data.root={TESTDATA / 'qata_samples'}",
                     f"train.out_dir={out}", *model, *train]) == 0
    info = json.loads((out / "model" / "model.json").read_text())
    assert {k: info["config"][k] for k in REFERENCE_ARCHITECTURE} == REFERENCE_ARCHITECTURE
    assert info["metrics"]["checkpoint_monitor"] == "val_loss" and 0 < info["metrics"]["val_loss"] < 1
    assert "val_dice_global" not in info["metrics"]
    from tevia.inference.segmenter import Segmenter

    net = Segmenter.load(out / "model", device="cpu").network
    assert net.stages[0].options.position_codes == "1d" and net.foreground_pooling == "resize"
