"""The LightningModule: a thin shell (steps, optimiser, logged metrics) around TeViANet.

Loss = DiceCE(logits, mask) (or Dice alone: `train.loss`) + alignment_weight x alignment. The
historic prototype keeps its own schedule (`HistoricPrototype.begin_epoch`: it collects during
the last warm-up epoch, index warmup - 1, and switches on at the start of the next one) and
follows each training batch with momentum (`observe`); validation never touches it. The
validation Dice (pooled: `val_dice`; per-image mean: `val_dice_mean`) is tevia.metrics.DiceTotals.

With model.click_inputs, each batch also decodes once more with simulated corrective clicks
(tevia.training.click_training) and that pass's segmentation loss is added; validation also logs
val_click_dice (pooled Dice after 3 simulated clicks per image).
With train.train_only_clicks, only the click injection learns: the rest of the network stays
frozen in eval mode (batch norms and the prototype unchanged), so the text-only output stays
exactly the initial model's and a step needs no encoder backward pass.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from monai.losses import DiceCELoss, DiceLoss

from tevia.training.augment import augment, flip_sides, flip_vertically
from tevia.training.click_training import draw_counts, simulate_click_maps
from tevia.config import TrainConfig
from tevia.metrics import DiceTotals
from tevia.model.alignment import alignment_loss
from tevia.model.network import TeViANet

__all__ = ["LitTeViA", "VAL_CLICKS"]

VAL_CLICKS = 3  # simulated clicks per image behind val_click_dice (networks with click inputs)

log = logging.getLogger(__name__)


class LitTeViA(L.LightningModule):
    """Training shell around a network.

    Args:
        network: the TeViANet to train.
        table: (N, T, D) text embeddings (tevia.inference.text_cache.text_table).
        index: each description -> its row in ``table``.
        config: the `train` section.
    """

    def __init__(self, network: TeViANet, table: torch.Tensor, index: dict[str, int], config: TrainConfig) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("text_table", table, persistent=False)
        self.text_index = index
        self.config = config
        warmup = config.prototype_warmup_epochs
        # train_only_clicks freezes the prototype too: it stays as the initial model has it, on or off.
        if not config.train_only_clicks and not network.prototype.active and not 1 <= warmup < config.max_epochs:
            raise ValueError(
                f"train.prototype_warmup_epochs={warmup} with train.max_epochs={config.max_epochs} never switches "
                f"the historic prototype on (it collects in epoch index warmup - 1 and is used from index warmup): "
                f"set 1 <= train.prototype_warmup_epochs < train.max_epochs")
        # "dice" is what the reference code trains on in effect: its DiceCELoss on probabilities,
        # under its MONAI version, has a zero cross-entropy term for one channel.
        self.loss_fn = DiceCELoss(sigmoid=True) if config.loss == "dice_ce" else DiceLoss(sigmoid=True)
        self.val_dice = DiceTotals()
        self.val_click_dice = DiceTotals()
        if config.train_only_clicks:
            if network.clicks is None:
                raise ValueError("train.train_only_clicks needs a network with click inputs (model.click_inputs: true)")
            for name, parameter in network.named_parameters():
                parameter.requires_grad_(name.startswith("clicks."))

    def _text(self, texts: list[str]) -> torch.Tensor:
        rows = torch.tensor([self.text_index[t] for t in texts], device=self.text_table.device)
        return self.text_table[rows]

    def _reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        trainer = self._trainer  # None when a step runs outside a Trainer (tests, benchmarks)
        if trainer is not None and trainer.world_size > 1:
            return trainer.strategy.reduce(t, reduce_op="mean")
        return t

    def on_train_epoch_start(self) -> None:
        self.network.prototype.begin_epoch(self.current_epoch, self.config.prototype_warmup_epochs, self._reduce_mean)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        image, mask, texts = batch["image"], batch["mask"], batch["text"]
        if self.config.augment:
            image, mask = augment(self.config.augmentation, image, mask)
            if self.config.vertical_flip:
                image, mask = flip_vertically(image, mask, texts)
            if self.config.horizontal_flip:
                image, mask, texts = flip_sides(image, mask, texts)
        text = self._text(texts)
        if self.config.train_only_clicks:
            return self._clicks_only_step(image, mask, text)
        feats = self.network.encode_image(image)
        out = self.network.decode(feats, text)
        seg_loss = self.loss_fn(out.logits, mask)
        fg = self.network.foreground(out, mask)
        align = alignment_loss(out.stage_text, fg, mask, self.config.alignment_skip_empty)
        loss = seg_loss + self.config.alignment_weight * align
        if self.network.clicks is not None:
            maps = simulate_click_maps(self.network, feats, text, mask, out.logits,
                                       draw_counts(image.shape[0], self.config.max_clicks))
            click_loss = self.loss_fn(self.network.decode(feats, text, maps).logits, mask)
            loss = loss + click_loss
            self.log("train_click_loss", click_loss, batch_size=image.shape[0])
        self.network.prototype.observe(fg, self._reduce_mean)
        bs = image.shape[0]
        self.log("train_loss", loss, prog_bar=True, batch_size=bs, sync_dist=False)
        self.log("train_align", align, batch_size=bs)
        return loss

    def _clicks_only_step(self, image: torch.Tensor, mask: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The click injection's loss with the rest of the network frozen (train.train_only_clicks)."""
        self.network.eval()
        with torch.no_grad():
            feats = self.network.encode_image(image)
            first = self.network.decode(feats, text).logits
        maps = simulate_click_maps(self.network, feats, text, mask, first, draw_counts(image.shape[0], self.config.max_clicks))
        loss = self.loss_fn(self.network.decode(feats, text, maps).logits, mask)
        self.log("train_loss", loss, prog_bar=True, batch_size=image.shape[0])
        self.log("train_click_loss", loss, batch_size=image.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self.val_dice, self.val_click_dice = DiceTotals(), DiceTotals()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        image, mask = batch["image"], batch["mask"]
        text = self._text(batch["text"])
        feats = self.network.encode_image(image)
        out = self.network.decode(feats, text)
        loss = self.loss_fn(out.logits, mask)
        if self.network.clicks is not None:
            counts = torch.full((image.shape[0],), VAL_CLICKS)
            self.val_click_dice.update(self.network.decode(feats, text, simulate_click_maps(
                self.network, feats, text, mask, out.logits, counts)).logits > 0, mask)
        self.val_dice.update(out.logits > 0, mask)
        self.log("val_loss", loss, prog_bar=True, batch_size=image.shape[0], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.network.clicks is not None:
            click_dice, _ = self.val_click_dice.compute(self._reduce_mean, self.device)
            self.log("val_click_dice", click_dice, prog_bar=True, sync_dist=False)
        dice, dice_mean = self.val_dice.compute(self._reduce_mean, self.device)
        self.log("val_dice", dice, prog_bar=True, sync_dist=False)
        self.log("val_dice_mean", dice_mean, sync_dist=False)
        if not self.trainer.sanity_checking and self.trainer.is_global_zero:
            # One line per epoch that front ends parse for progress (the Slicer fine-tune job).
            log.info("epoch %d/%d val_dice %.4f", self.current_epoch + 1, self.trainer.max_epochs, dice)

    def configure_optimizers(self):
        params = [p for p in self.network.parameters() if p.requires_grad]
        # The fused kernel (one pass over all tensors) is several times faster than the per-tensor loop.
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        opt = torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay, fused=fused)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.config.max_epochs, 1),
                                                           eta_min=self.config.eta_min)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
