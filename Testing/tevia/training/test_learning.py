"""A real learning check: a small model overfits 16 real chest X-rays on the CPU.

Uses the committed QaTa samples, the real training pieces (LitTeViA's loss and prototype
schedule through Lightning) and the real evaluation path; it must reach Dice >= 0.8 on the
images it trained on, which an untrained or broken model does not.
"""

import numpy as np
import torch

from conftest import TESTDATA
from tevia.config import from_dict
from tevia.commands.evaluate import evaluate_model
from tevia.inference.segmenter import Segmenter
from tevia.training.data.dataset import CSVSegmentationDataset
from tevia.training.train import train


def test_small_model_overfits_16_real_images(tmp_path):
    torch.set_num_threads(2)
    config = from_dict({
        "model": {"vision": {"kind": "mobilenet_v2", "pretrained": True},
                  "text": {"max_tokens": 16}, "image_size": [96, 96],
                  "neck_channels": [16, 32, 64, 128], "stage_tokens": [8, 4, 4]},
        "data": {"root": str(TESTDATA / "qata_samples"), "train_split": "samples", "val_split": "samples",
                 "train_fraction": 0.8, "val_fraction": 0.8, "side_convention": "image"},
        "train": {"max_epochs": 60, "batch_size": 8, "lr": 0.002, "prototype_warmup_epochs": 20,
                  "early_stopping_patience": 100, "augment": False, "threads": 2, "val_every_n_epochs": 10,
                  "out_dir": str(tmp_path / "run"), "model_name": "overfit"},
    })
    folder = train(config)
    seg = Segmenter.load(folder, device="cpu")
    assert seg.network.prototype.active  # warm-up ended: the prototype is saved and in use
    data = torch.utils.data.Subset(
        CSVSegmentationDataset(TESTDATA / "qata_samples", "samples", image_size=(96, 96)), range(16))
    metrics, _ = evaluate_model(seg, data, batch_size=8, threshold=0.5)
    assert metrics["n"] == 16
    assert metrics["dice_global"] >= 0.8, metrics
    assert np.isfinite(metrics["dice_mean"])
