"""The historic visual prototype: target semantics aggregated over the training data.

One vector per decoder stage (its width). During the last warm-up epoch the batch-mean
foreground representations are summed; at the end of that epoch their average becomes the
prototype; in later training steps it follows each batch with momentum (0.99). Everything
lives in registered buffers, so it is saved and loaded with the weights, and the model uses
it at inference exactly as after the warm-up. The training loop drives it with two calls:
`begin_epoch` at the start of every training epoch and `observe` after every training step.

The buffers stay float32 whatever the module is cast to (Lightning's `bf16-true` casts the
whole network): a 0.99 momentum step is below bfloat16's resolution and would stall.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["HistoricPrototype", "RANGE_EPS"]

RANGE_EPS = ("clamp", "add")

OFF, COLLECTING, ACTIVE = 0, 1, 2

Reduce = Callable[[torch.Tensor], torch.Tensor]
"""Combines a tensor over the training processes (the mean under DDP; the identity for one)."""


class HistoricPrototype(nn.Module):
    """Per-stage prototype vectors with warm-up averaging and momentum updates.

    Args:
        widths: the width of each decoder stage (e.g. [768, 384, 192]).
        momentum: weight of the old prototype in a momentum update.
        range_eps: how the min-max normalisation guards a zero range: "clamp" divides by
            max(max - min, 1e-6), "add" (the reference's) by max - min + 1e-6.
    """

    def __init__(self, widths: list[int], momentum: float = 0.99, range_eps: str = "clamp") -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if range_eps not in RANGE_EPS:
            raise ValueError(f"model.prototype_range_eps must be one of {RANGE_EPS}, got {range_eps!r}")
        self.widths = list(widths)
        self.momentum = momentum
        self.range_eps = range_eps
        self.register_buffer("state", torch.tensor(OFF, dtype=torch.long))
        self.register_buffer("count", torch.tensor(0, dtype=torch.long))
        for i, w in enumerate(self.widths):
            self.register_buffer(f"vector{i}", torch.zeros(w))
            self.register_buffer(f"sum{i}", torch.zeros(w))

    def _apply(self, fn, recurse: bool = True):
        """nn.Module's `_apply` (device moves, dtype casts), then the float buffers back to float32."""
        super()._apply(fn, recurse)
        for name, buffer in self._buffers.items():
            if buffer is not None and buffer.is_floating_point() and buffer.dtype != torch.float32:
                self._buffers[name] = buffer.float()
        return self

    @property
    def active(self) -> bool:
        return int(self.state) == ACTIVE

    @property
    def collecting(self) -> bool:
        return int(self.state) == COLLECTING

    def vector(self, stage: int) -> torch.Tensor:
        return getattr(self, f"vector{stage}")

    def _sums(self) -> list[torch.Tensor]:
        return [getattr(self, f"sum{i}") for i in range(len(self.widths))]

    def begin_epoch(self, epoch: int, warmup_epochs: int, reduce: Reduce | None = None) -> None:
        """The schedule, called at the start of every training epoch (0-based ``epoch``).

        Collecting starts with epoch ``warmup_epochs - 1``; from epoch ``warmup_epochs`` on
        (also when a run resumes there) the collected sums, first combined over the processes
        by ``reduce``, become the prototype and it is on. Switching at the start of an epoch,
        not at the end of the previous one, keeps that epoch's checkpoint as its validation ran.
        A prototype already on stays on.
        """
        if self.collecting and epoch >= warmup_epochs:
            if reduce is not None:
                for total in self._sums():
                    total.copy_(reduce(total))
            self.finish_collecting()
        elif epoch == warmup_epochs - 1:
            self.start_collecting()

    def start_collecting(self) -> None:
        """Starts summing batch-mean foreground vectors (the last warm-up epoch)."""
        if self.active:
            return
        self.state.fill_(COLLECTING)
        self.count.zero_()
        for total in self._sums():
            total.zero_()

    def finish_collecting(self) -> None:
        """Turns the collected sums into the prototype and switches it on."""
        if not self.collecting or int(self.count) == 0:
            return
        for i, total in enumerate(self._sums()):
            self.vector(i).copy_(total / self.count)
        self.state.fill_(ACTIVE)

    @torch.no_grad()
    def observe(self, foreground: list[torch.Tensor], reduce: Reduce | None = None) -> None:
        """Feeds one training batch's foreground vectors, each (B, width_i) (no gradient flows).

        While collecting their batch means (in float32, combined over the processes by
        ``reduce``) are summed; once active, the prototype follows them with momentum. Off:
        nothing happens (and ``reduce`` is not called).
        """
        if len(foreground) != len(self.widths):
            raise ValueError(f"expected {len(self.widths)} foreground vectors, got {len(foreground)}")
        if int(self.state) == OFF:
            return
        means = [f.float().mean(0) for f in foreground]
        if reduce is not None:
            means = [reduce(m) for m in means]
        if self.collecting:
            self.count += 1
            for total, m in zip(self._sums(), means):
                total.add_(m)
        else:
            for i, m in enumerate(means):
                self.vector(i).mul_(self.momentum).add_(m, alpha=1.0 - self.momentum)

    def modulation(self, stage: int) -> torch.Tensor | None:
        """The min-max normalised prototype of a stage (width,), or None while it is off."""
        if not self.active:
            return None
        v = self.vector(stage)
        spread = v.max() - v.min()
        return (v - v.min()) / (spread.clamp_min(1e-6) if self.range_eps == "clamp" else spread + 1e-6)
