"""`tevia train`: shipped configs build, the CLI trains/exports/resumes/fine-tunes, validation
leaves the prototype alone."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import REPO, TESTDATA
from tevia.commands.cli import main as cli_main
from tevia.config import load_config
from tevia.model.build import build_network

torch.set_num_threads(1)
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_builds(path):
    config = load_config(path)
    net = build_network(config.model, text_dim=384)
    h, w = config.model.image_size
    with torch.no_grad():
        out = net.eval()(torch.rand(1, config.model.in_channels, h, w), torch.randn(1, config.model.text.max_tokens, 384))
    assert out.logits.shape == (1, 1, h, w)


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['epochs'\] in train"):
        load_config(CONFIGS[0], ["train.epochs=3"])
    with pytest.raises(ValueError, match="section.key=value"):
        load_config(CONFIGS[0], ["max_epochs"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def _smoke(out: Path, *extra: str) -> int:
    return cli_main(["train", "--config", str(REPO / "configs" / "smoke.yaml"),
                     f"data.root={TESTDATA / 'qata_samples'}", f"train.out_dir={out}", *extra])


def test_train_cli_exports_resumes_and_fine_tunes(tmp_path):
    out = tmp_path / "run"
    assert _smoke(out) == 0
    info = json.loads((out / "model" / "model.json").read_text())
    assert info["format"] == "tevia-model/1" and info["side_convention"] == "image"
    assert "lung" in info["vocabulary"] and info["example_prompts"]
    assert info["text_encoder"]["sha256"]  # the frozen encoder is referenced by hash, not copied
    assert info["domain"]["file"] == "domain.safetensors" and info["domain"]["calibration"]["val_images"] == 20
    assert (out / "model" / "domain.safetensors").is_file()  # the training images' description, for the check
    assert (out / "curves.png").stat().st_size > 0
    assert (out / "logs" / "metrics.csv").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()

    first_epochs = set(pd.read_csv(out / "logs" / "metrics.csv")["epoch"].dropna())
    assert _smoke(out, "train.max_epochs=3", "--resume") == 0
    resumed = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 2  # continued from epoch 1 of the first run instead of starting over
    epochs = pd.read_csv(out / "logs" / "metrics.csv")["epoch"].dropna()
    assert first_epochs and first_epochs < set(epochs) and set(epochs) <= {0, 1, 2}  # the log kept the first run
    assert not (out / "logs" / "metrics-before-resume.csv").exists()

    from tevia.inference.segmenter import Segmenter

    # Fine-tuning starts from the given model: an active prototype carries over (one epoch, no
    # warm-up). The exported model is the best epoch; should that ever be the collecting epoch
    # (prototype off, as validated), the fine-tune needs a schedule that switches it on instead.
    init_active = Segmenter.load(out / "model", device="cpu").network.prototype.active
    schedule = (["train.max_epochs=1", "train.prototype_warmup_epochs=5"] if init_active
                else ["train.max_epochs=2", "train.prototype_warmup_epochs=1"])
    tuned = tmp_path / "tuned"
    assert _smoke(tuned, *schedule, "--init", str(out / "model")) == 0
    assert Segmenter.load(tuned / "model", device="cpu").network.prototype.active


def test_last_checkpoint_is_the_last_epoch_even_when_it_did_not_improve(tmp_path):
    """--resume continues from the last epoch: Lightning 2.6's save_last wrote last.ckpt only
    with a new best one, so a resume went back to the best epoch."""
    out = tmp_path / "run"
    assert _smoke(out, "train.limit_train_batches=1", "train.lr=0.05") == 0  # diverges: epoch 1 is no better
    best, last = (torch.load(out / "checkpoints" / f"{name}.ckpt", map_location="cpu", weights_only=True)
                  for name in ("best", "last"))
    assert best["epoch"] == 0
    assert last["epoch"] == 1 and last["global_step"] == 2


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, caplog):
    assert _smoke(tmp_path / "fresh", "--resume") == 2
    assert "start without --resume" in caplog.text


def test_validation_leaves_the_prototype_unchanged(tiny_model_dir):
    import lightning as L
    from torch.utils.data import DataLoader

    from tevia.config import TrainConfig
    from tevia.training.data.dataset import CSVSegmentationDataset
    from tevia.inference.segmenter import Segmenter
    from tevia.training.lightning_module import LitTeViA
    from tevia.training.train import _collate

    seg = Segmenter.load(tiny_model_dir, device="cpu")
    net = seg.network
    net.prototype.start_collecting()
    net.prototype.observe([torch.rand(2, w) for w in net.stage_widths])
    net.prototype.finish_collecting()
    before = {k: v.clone() for k, v in net.prototype.state_dict().items()}
    data = CSVSegmentationDataset(TESTDATA / "qata_samples", "samples", image_size=(64, 64))
    texts = sorted(set(data.texts))
    lit = LitTeViA(net, seg.encode_text(texts).cpu(), {t: i for i, t in enumerate(texts)}, TrainConfig())
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False)
    result = trainer.validate(lit, DataLoader(data, batch_size=10, collate_fn=_collate), verbose=False)
    assert 0.0 <= result[0]["val_dice"] <= 1.0
    for k, v in net.prototype.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=f"validation changed prototype buffer {k}")
