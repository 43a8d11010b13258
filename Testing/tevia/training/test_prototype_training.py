"""The method inside training: the alignment term is in the step, the historic prototype's
warm-up and momentum run as documented inside a real Lightning Trainer (also under
bf16-true), every saved checkpoint was validated as saved, and a warm-up that would never
switch the prototype on is refused. Tiny model, the 20 bundled QaTa samples: seconds each."""

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from conftest import TESTDATA
from tevia.checkpoint import load_network_weights, read_model_json
from tevia.config import TrainConfig
from tevia.training.data.dataset import CSVSegmentationDataset
from tevia.training.lightning_module import LitTeViA
from tevia.model.alignment import alignment_loss
from tevia.model.build import build_network
from tevia.model.prototype import HistoricPrototype
from tevia.training.train import _collate

torch.set_num_threads(1)
STATES = {0: "off", 1: "collecting", 2: "active"}


@pytest.fixture(scope="module")
def samples(tiny_model_dir):
    """(model folder, the 20 samples at the tiny model's size, their text table and index)."""
    from tevia.inference.segmenter import Segmenter

    data = CSVSegmentationDataset(TESTDATA / "qata_samples", "samples", image_size=(64, 64))
    texts = sorted(set(data.texts))
    table = Segmenter.load(tiny_model_dir, device="cpu").encode_text(texts).cpu()
    return tiny_model_dir, data, table, {t: i for i, t in enumerate(texts)}


def _lit(samples, **train) -> LitTeViA:
    """A fresh LitTeViA on the tiny model's weights (prototype off)."""
    folder, _, table, index = samples
    config, info = read_model_json(folder)
    network = build_network(config, table.shape[-1], pretrained_vision=False)
    load_network_weights(network, folder, info)
    return LitTeViA(network.train(), table, index, TrainConfig(augment=False, **train))


def _loader(samples) -> DataLoader:
    return DataLoader(samples[1], batch_size=10, shuffle=False, collate_fn=_collate)


def _trainer(tmp_path: Path, epochs: int, callbacks: list, precision: str = "32-true") -> L.Trainer:
    checkpointing = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    return L.Trainer(accelerator="cpu", max_epochs=epochs, precision=precision, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=checkpointing,
                     num_sanity_val_steps=0, default_root_dir=tmp_path, callbacks=callbacks)


class _Record(L.Callback):
    """The prototype around every training batch, its state in validation, the val metrics,
    and (through `spy`) the foreground vectors each training step fed it."""

    def __init__(self, lit: LitTeViA) -> None:
        self.steps: list[dict] = []
        self.validated: dict[int, dict] = {}
        self.foreground: list[list[torch.Tensor]] = []
        network = lit.network
        plain = network.foreground

        def spy(output, mask):
            vectors = plain(output, mask)
            self.foreground.append([v.detach().float().clone() for v in vectors])
            return vectors

        network.foreground = spy  # records the real vectors; the step uses them unchanged

    @staticmethod
    def _snapshot(proto: HistoricPrototype) -> dict:
        return {"state": STATES[int(proto.state)], "count": int(proto.count),
                "vectors": [proto.vector(i).clone() for i in range(len(proto.widths))],
                "sums": [getattr(proto, f"sum{i}").clone() for i in range(len(proto.widths))]}

    def on_train_batch_start(self, trainer, lit, batch, batch_idx) -> None:
        self.steps.append({"epoch": trainer.current_epoch, "before": self._snapshot(lit.network.prototype)})

    def on_train_batch_end(self, trainer, lit, outputs, batch, batch_idx) -> None:
        self.steps[-1]["after"] = self._snapshot(lit.network.prototype)

    def on_validation_batch_start(self, trainer, lit, batch, batch_idx, dataloader_idx=0) -> None:
        self.validated.setdefault(trainer.current_epoch, {})["state"] = STATES[int(lit.network.prototype.state)]

    def on_validation_end(self, trainer, lit) -> None:
        metrics = trainer.callback_metrics
        self.validated[trainer.current_epoch].update(val_loss=float(metrics["val_loss"]),
                                                     val_dice=float(metrics["val_dice"]))


def _check_schedule(record: _Record, warmup: int, momentum: float, atol: float) -> None:
    """The documented schedule, step by step: off before epoch warmup - 1; collecting there
    (the sums add each step's batch mean); on from epoch warmup as the mean of the collected
    batch means; then each step moves it by momentum towards the step's batch mean."""
    assert len(record.foreground) == len(record.steps)
    for step, fg in zip(record.steps, record.foreground):
        epoch, before, after = step["epoch"], step["before"], step["after"]
        means = [f.mean(0) for f in fg]
        if epoch < warmup - 1:
            assert before["state"] == after["state"] == "off"
            assert all(float(v.abs().max()) == 0 for v in after["vectors"] + after["sums"])
        elif epoch == warmup - 1:
            assert before["state"] == after["state"] == "collecting"
            assert after["count"] == before["count"] + 1
            for s0, s1, m in zip(before["sums"], after["sums"], means):
                torch.testing.assert_close(s1, s0 + m, atol=atol, rtol=0)
        else:
            assert before["state"] == after["state"] == "active"
            for v0, v1, m in zip(before["vectors"], after["vectors"], means):
                torch.testing.assert_close(v1, momentum * v0 + (1 - momentum) * m, atol=atol, rtol=0)
    last_collecting = [s for s in record.steps if s["epoch"] == warmup - 1][-1]["after"]
    first_active = [s for s in record.steps if s["epoch"] == warmup][0]["before"]
    for v, s in zip(first_active["vectors"], last_collecting["sums"]):
        torch.testing.assert_close(v, s / last_collecting["count"], atol=atol, rtol=0)
    # Validation runs with the state that the epoch's training ended in: off until warm-up ends.
    assert {e: v["state"] for e, v in record.validated.items()} == {
        e: ("active" if e >= warmup else "collecting" if e == warmup - 1 else "off") for e in record.validated}


def test_alignment_term_is_in_the_training_step(samples):
    """The step's loss is segmentation + weight x alignment, and the alignment's gradient
    reaches the text projections through the step (removing or detaching the term fails)."""
    batch = next(iter(_loader(samples)))
    grads, losses = {}, {}
    for weight in (0.0, 0.1):
        lit = _lit(samples, alignment_weight=weight)
        lit.network.eval()  # batch norm on running statistics: both steps compute the same network
        losses[weight] = lit.training_step(batch, 0)
        losses[weight].backward()
        grads[weight] = lit.network.stages[0].text_projection.proj.weight.grad.clone()
    network = lit.network
    network.zero_grad()
    out = network(batch["image"], lit._text(batch["text"]))
    align = alignment_loss(out.stage_text, network.foreground(out, batch["mask"]), batch["mask"])
    assert float(align.detach()) > 0.1
    torch.testing.assert_close(losses[0.1] - losses[0.0], 0.1 * align, atol=1e-6, rtol=0)
    (0.1 * align).backward()
    expected = network.stages[0].text_projection.proj.weight.grad
    assert float(expected.abs().max()) > 0
    torch.testing.assert_close(grads[0.1] - grads[0.0], expected, atol=1e-7, rtol=1e-4)


def test_warmup_and_momentum_in_a_trainer_run(samples, tmp_path):
    """3 epochs, warm-up 2: off in epoch 0, collecting in epoch 1, on from epoch 2 with momentum."""
    lit = _lit(samples, max_epochs=3, prototype_warmup_epochs=2)
    record = _Record(lit)
    _trainer(tmp_path, 3, [record]).fit(lit, _loader(samples), _loader(samples))
    assert [s["epoch"] for s in record.steps] == [0, 0, 1, 1, 2, 2]
    _check_schedule(record, warmup=2, momentum=lit.network.prototype.momentum, atol=1e-6)
    assert lit.network.prototype.active


def test_every_checkpoint_was_validated_as_saved(samples, tmp_path):
    """The checkpoint of the collecting epoch holds the prototype as that epoch's validation
    ran (off), so validating any saved checkpoint again gives the metrics logged for it; a run
    resumed from that checkpoint switches the prototype on."""
    lit = _lit(samples, max_epochs=2, prototype_warmup_epochs=1)
    record = _Record(lit)
    # As `tevia train` keeps them (monitored, validation every epoch), but every epoch kept.
    keep = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", monitor="val_dice", mode="max", save_top_k=-1)
    _trainer(tmp_path, 2, [record, keep]).fit(lit, _loader(samples), _loader(samples))
    assert record.validated[0]["state"] == "collecting" and record.validated[1]["state"] == "active"
    for epoch in (0, 1):
        saved = torch.load(tmp_path / "ckpt" / f"epoch={epoch}.ckpt", map_location="cpu", weights_only=True)
        again = _lit(samples)
        again.load_state_dict(saved["state_dict"])
        assert STATES[int(again.network.prototype.state)] == record.validated[epoch]["state"], f"epoch {epoch}"
        result = _trainer(tmp_path, 1, []).validate(again, _loader(samples), verbose=False)[0]
        for key in ("val_loss", "val_dice"):
            assert result[key] == pytest.approx(record.validated[epoch][key], abs=1e-6), f"epoch {epoch} {key}"

    # Resumed from the collecting epoch's checkpoint, the run switches the prototype on.
    resumed = _lit(samples, max_epochs=2, prototype_warmup_epochs=1)
    record = _Record(resumed)
    _trainer(tmp_path, 2, [record]).fit(resumed, _loader(samples), _loader(samples),
                                        ckpt_path=str(tmp_path / "ckpt" / "epoch=0.ckpt"))
    assert [s["epoch"] for s in record.steps] == [1, 1] and record.steps[0]["before"]["state"] == "active"
    proto = torch.load(tmp_path / "ckpt" / "epoch=0.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    count = int(proto["network.prototype.count"])
    torch.testing.assert_close(record.steps[0]["before"]["vectors"][0], proto["network.prototype.sum0"] / count)


def test_bf16_true_training_keeps_the_prototype_fp32(samples, tmp_path):
    """Under `train.precision: bf16-true` the network runs in bfloat16 but the prototype's
    buffers stay float32, so its momentum updates are exact (in bf16 they stall)."""
    lit = _lit(samples, max_epochs=2, prototype_warmup_epochs=1)
    record = _Record(lit)
    _trainer(tmp_path, 2, [record], precision="bf16-true").fit(lit, _loader(samples), _loader(samples))
    assert lit.network.stages[0].text_projection.proj.weight.dtype == torch.bfloat16  # bf16-true really ran
    assert {b.dtype for n, b in lit.network.prototype.named_buffers() if b.is_floating_point()} == {torch.float32}
    _check_schedule(record, warmup=1, momentum=lit.network.prototype.momentum, atol=1e-6)


def test_a_bf16_network_keeps_an_fp32_prototype_that_follows_its_target():
    """After the module is cast to bfloat16, 300 momentum steps from 0.5 towards 0.875 (both
    exact in bf16) reach 0.875 - 0.375 x 0.99^300 = 0.857 (bf16 buffers stall at 0.586)."""
    proto = HistoricPrototype([4]).to(torch.bfloat16)
    assert proto.vector(0).dtype == torch.float32 and proto.sum0.dtype == torch.float32
    proto.start_collecting()
    proto.observe([torch.full((2, 4), 0.5, dtype=torch.bfloat16)])
    proto.finish_collecting()
    for _ in range(300):
        proto.observe([torch.full((2, 4), 0.875, dtype=torch.bfloat16)])
    torch.testing.assert_close(proto.vector(0), torch.full((4,), 0.875 - 0.375 * 0.99**300), atol=1e-5, rtol=0)


@pytest.mark.parametrize("warmup", [0, 3, 4])
def test_a_warmup_that_never_switches_the_prototype_on_is_refused(samples, warmup):
    with pytest.raises(ValueError, match=rf"train.prototype_warmup_epochs={warmup} .*train.max_epochs=3"):
        _lit(samples, max_epochs=3, prototype_warmup_epochs=warmup)
    lit = _lit(samples, max_epochs=3, prototype_warmup_epochs=2)
    proto = lit.network.prototype
    proto.start_collecting()
    proto.observe([torch.rand(1, w) for w in proto.widths])
    proto.finish_collecting()
    # Fine-tuning a model whose prototype is on: the warm-up does not matter and is accepted.
    LitTeViA(lit.network, lit.text_table, lit.text_index, TrainConfig(max_epochs=3, prototype_warmup_epochs=warmup))


def test_the_schedule_is_a_method_of_the_prototype():
    """begin_epoch: off before epoch warmup - 1, collecting there, on from epoch warmup with the
    sums combined over the processes (`reduce`) first; observe combines each batch mean, and
    not at all while off."""
    proto = HistoricPrototype([3, 2], momentum=0.5)
    doubled = lambda t: 2 * t  # noqa: E731 (a stand-in for the DDP mean: visible in the values)

    def refuse(t):
        raise AssertionError("reduce called while the prototype is off")

    proto.begin_epoch(0, 2, doubled)
    proto.observe([torch.ones(4, 3), torch.ones(4, 2)], refuse)
    assert int(proto.state) == 0 and int(proto.count) == 0
    proto.begin_epoch(1, 2, doubled)
    assert proto.collecting
    proto.observe([torch.full((4, 3), 1.0), torch.full((4, 2), 3.0)], doubled)
    proto.observe([torch.full((4, 3), 2.0), torch.full((4, 2), 5.0)])
    torch.testing.assert_close(proto.sum1, torch.full((2,), 2 * 3.0 + 5.0))
    proto.begin_epoch(2, 2, doubled)
    assert proto.active and int(proto.count) == 2
    torch.testing.assert_close(proto.vector(0), torch.full((3,), 2 * (2 * 1.0 + 2.0) / 2))
    proto.observe([torch.zeros(4, 3), torch.zeros(4, 2)], doubled)
    torch.testing.assert_close(proto.vector(0), torch.full((3,), 0.5 * 4.0))
    proto.begin_epoch(3, 2, refuse)  # on stays on
    assert proto.active
