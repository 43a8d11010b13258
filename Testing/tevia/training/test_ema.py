"""train.ema_decay: an exponential moving average of the weights (tevia.training.ema). It is the closed-form
average of the real steps' weights, validation runs on it, checkpoints keep it beside the trained
weights so that --resume continues both, and `tevia train` exports it (also after --init)."""

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from conftest import REPO, TESTDATA
from tevia.commands.cli import main as cli_main
from tevia.config import TrainConfig, load_config
from tevia.training.ema import PROTOTYPE_PREFIX, WeightEMA

torch.set_num_threads(1)
DECAY = 0.6  # far from 1, so that a few steps move the average visibly


class Recorder(Callback):
    """The trained (not averaged) weights and buffers when training starts and after each step."""

    def __init__(self) -> None:
        self.start: dict[str, torch.Tensor] = {}
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = {k: v.clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append({k: v.clone() for k, v in pl_module.state_dict().items()})


def _lit(model_dir):
    """A real LitTeViA on the tiny model, its historic prototype already on (so it moves every step)."""
    from tevia.training.data.dataset import CSVSegmentationDataset
    from tevia.inference.segmenter import Segmenter
    from tevia.training.lightning_module import LitTeViA
    from tevia.training.train import _collate

    torch.manual_seed(0)
    seg = Segmenter.load(model_dir, device="cpu")
    net = seg.network.train()
    net.prototype.start_collecting()
    net.prototype.observe([torch.rand(2, w) for w in net.stage_widths])
    net.prototype.finish_collecting()
    data = CSVSegmentationDataset(TESTDATA / "qata_samples", "samples", image_size=(64, 64))
    texts = sorted(set(data.texts))
    lit = LitTeViA(net, seg.encode_text(texts).cpu(), {t: i for i, t in enumerate(texts)},
                   TrainConfig(lr=3e-3, max_epochs=2, augment=False))
    loader = DataLoader(data, batch_size=5, collate_fn=_collate)
    return lit, loader


def _fit(lit, loader, callbacks, epochs: int, steps: int, ckpt_path=None) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, limit_train_batches=steps, limit_val_batches=1,
                        num_sanity_val_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks), callbacks=callbacks)
    trainer.fit(lit, loader, loader, ckpt_path=ckpt_path)
    return trainer


def _validate(lit, loader) -> float:
    trainer = L.Trainer(accelerator="cpu", limit_val_batches=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    return trainer.validate(lit, loader, verbose=False)[0]["val_loss"]


def test_the_average_is_the_closed_form_one_and_validation_runs_on_it(tiny_model_dir):
    lit, loader = _lit(tiny_model_dir)
    ema, recorder = WeightEMA(DECAY), Recorder()
    trainer = _fit(lit, loader, [recorder, ema], epochs=1, steps=3)
    fit_val_loss = float(trainer.callback_metrics["val_loss"])
    averaged = ema.averaged_module().state_dict()
    trained = recorder.steps
    assert len(trained) == 3
    learned = [k for k, p in lit.named_parameters() if p.requires_grad] + [
        k for k in averaged if k.endswith(("running_mean", "running_var"))]
    assert len(learned) > 100
    moved = 0
    for key in learned:
        w1, w2, w3 = (step[key] for step in trained)
        expected = DECAY ** 2 * w1 + (1 - DECAY) * DECAY * w2 + (1 - DECAY) * w3
        torch.testing.assert_close(averaged[key], expected, atol=1e-6, rtol=1e-5, msg=key)
        moved += not torch.allclose(averaged[key], w3)
    assert moved > len(learned) // 2  # the average is not the trained weights
    prototype = [k for k in averaged if k.startswith(PROTOTYPE_PREFIX)]
    assert not torch.equal(trained[0][f"{PROTOTYPE_PREFIX}vector0"], trained[2][f"{PROTOTYPE_PREFIX}vector0"])
    for key in prototype:  # the prototype follows its own schedule: the trained network's, not averaged
        assert torch.equal(averaged[key], trained[2][key]), key

    # The fit's validation ran on the averaged weights (which the fit leaves in the network at its end).
    assert _validate(lit, loader) == pytest.approx(fit_val_loss, abs=1e-6)
    lit.load_state_dict(trained[2])
    assert abs(_validate(lit, loader) - fit_val_loss) > 1e-4


def test_resume_continues_the_average_and_the_trained_weights(tiny_model_dir, tmp_path):
    lit, loader = _lit(tiny_model_dir)
    _fit(lit, loader, [WeightEMA(DECAY), ModelCheckpoint(tmp_path, filename="last")], epochs=1, steps=2)
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert int(saved["averaging_state"]["n_averaged"]) == 2

    lit, loader = _lit(tiny_model_dir)  # a fresh process would start from the initial weights too
    ema, recorder = WeightEMA(DECAY), Recorder()
    _fit(lit, loader, [recorder, ema], epochs=2, steps=1, ckpt_path=tmp_path / "last.ckpt")
    for key, value in saved["current_model_state"].items():  # training goes on from the trained weights
        assert torch.equal(recorder.start[key], value), key
    averaged = ema.averaged_module().state_dict()
    w_next = recorder.steps[0]
    for key, p in lit.named_parameters():  # ... and the average from the saved average
        expected = DECAY * saved["state_dict"][key] + (1 - DECAY) * w_next[key]
        torch.testing.assert_close(averaged[key], expected, atol=1e-6, rtol=1e-5, msg=key)


def test_decay_outside_its_range_and_half_precision_weights_are_refused():
    for value in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"train.ema_decay must be 0 \(off\) or in \(0, 1\)"):
            load_config(REPO / "configs" / "smoke.yaml", [f"train.ema_decay={value}"])
    with pytest.raises(ValueError, match=r"train.ema_decay must be in \(0, 1\)"):
        WeightEMA(0.0)
    with pytest.raises(ValueError, match="train.precision=bf16-true .* use bf16-mixed"):
        load_config(REPO / "configs" / "smoke.yaml", ["train.ema_decay=0.999", "train.precision=bf16-true"])
    assert load_config(REPO / "configs" / "smoke.yaml", ["train.ema_decay=0.999", "train.precision=bf16-mixed"])


def _smoke(out, *extra: str) -> int:
    return cli_main(["train", "--config", str(REPO / "configs" / "smoke.yaml"), f"data.root={TESTDATA / 'qata_samples'}",
                     f"train.out_dir={out}", f"train.ema_decay={DECAY}", *extra])


def _network_state(checkpoint: dict, key: str = "state_dict") -> dict[str, torch.Tensor]:
    return {k.removeprefix("network."): v for k, v in checkpoint[key].items() if k.startswith("network.")}


def test_tevia_train_exports_the_average_after_resume_and_init(tmp_path):
    out = tmp_path / "run"
    assert _smoke(out) == 0
    assert _smoke(out, "train.max_epochs=3", "--resume") == 0
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 6  # every epoch's last.ckpt, improved or not
    assert int(last["averaging_state"]["n_averaged"]) == 6  # the average went on across the resume

    info = json.loads((out / "model" / "model.json").read_text())
    assert info["metrics"]["ema_decay"] == DECAY
    best = torch.load(out / "checkpoints" / info["metrics"]["best_checkpoint"], map_location="cpu", weights_only=True)
    exported, averaged, trained = load_file(out / "model" / "model.safetensors"), _network_state(best), \
        _network_state(best, "current_model_state")
    assert set(exported) == set(averaged)
    assert all(torch.equal(exported[k], averaged[k]) for k in exported)
    assert sum(not torch.equal(exported[k], trained[k]) for k in exported) > 100

    tuned = tmp_path / "tuned"
    assert _smoke(tuned, "--init", str(out / "model")) == 0  # (an initial prototype that is on stays on)
    best = torch.load(tuned / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    exported = load_file(tuned / "model" / "model.safetensors")
    assert all(torch.equal(exported[k], v) for k, v in _network_state(best).items())
    assert int(best["averaging_state"]["n_averaged"]) == best["global_step"] > 0
