"""Exponential moving average (EMA) of the weights during training (`train.ema_decay`).

Lightning's `WeightAveraging` callback does the bookkeeping: after each optimiser step it
updates an averaged copy of the LightningModule; validation (hence the kept checkpoint and
early stopping) runs on the averaged weights; a checkpoint holds the averaged weights as its
`state_dict` (what `tevia train` exports) and the trained ones as `current_model_state`, so
`--resume` restores both. The first update copies the weights, then each one moves the
average by (1 - decay) towards the current weights: after n updates the average is
decay^(n-1) w_1 + sum over k = 2..n of (1 - decay) decay^(n-k) w_k.

What is averaged and what is copied (after every update, before validation and saving):
- averaged: every floating-point parameter and buffer, so the batch norms' running statistics
  too (they describe the activations of averaged weights better than the current weights'
  statistics do; timm's ModelEma and Lightning average them the same way). A frozen parameter
  stays exact: the average of a constant, computed with `lerp`, is that constant.
- copied from the trained network: the historic prototype's buffers (tevia.model.prototype).
  The prototype is already a momentum average (0.99 per batch) of the trained encoder's
  foreground features, with its own schedule: summed during the collecting epoch, switched on
  after it. Averaged again, its on/off state and its sums would become meaningless blends
  and its vectors would lag the schedule by a further ~1/(1 - decay) steps; copied, the
  averaged network validates and exports with the prototype the schedule built. Integer
  buffers (batch-norm step counters) are copied too.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn

__all__ = ["WeightEMA", "PROTOTYPE_PREFIX"]

PROTOTYPE_PREFIX = "network.prototype."  # buffer names, in the LightningModule, that follow the trained network


class WeightEMA(WeightAveraging):
    """EMA of a LitTeViA's weights, updated after every optimiser step.

    Args:
        decay: weight of the old average in each update, 0 < decay < 1 (typical: 0.999, an
            average over the last ~1000 steps).
    """

    def __init__(self, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1) to average the weights (0 turns it off), got {decay}")
        super().__init__(use_buffers=True, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.decay = decay

    def averaged_module(self) -> torch.nn.Module:
        """The averaged copy of the LightningModule (after `setup` of a fit)."""
        if self._average_model is None:
            raise RuntimeError("the averaged weights exist only during and after a fit")
        return self._average_model.module

    def _follow_trained(self, pl_module: L.LightningModule) -> None:
        """Copies the prototype's buffers and the integer buffers into the averaged copy."""
        current = dict(pl_module.named_buffers())
        with torch.no_grad():
            for name, buffer in self.averaged_module().named_buffers():
                if name.startswith(PROTOTYPE_PREFIX) or not buffer.is_floating_point():
                    buffer.copy_(current[name])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._follow_trained(pl_module)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._average_model is not None:
            self._follow_trained(pl_module)
        super().on_validation_epoch_start(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is not None:
            self._follow_trained(pl_module)
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
