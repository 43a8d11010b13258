"""From per-prompt probabilities to a uint8 labelmap: resize to the slice size, threshold, pick a prompt.

The model answers at its own input size (e.g. 128x128); each prompt's probabilities are resized
back to the slice size (``tevia.inference.transforms.resize_planes``, bilinear) before the threshold. Resizing is most of the cost on a big
volume, so slices that cannot reach the threshold are not resized at all (exact: see
:func:`may_exceed`), and a single prompt is thresholded straight into the labelmap.
"""

from __future__ import annotations

import numpy as np
import torch

from tevia.inference.transforms import resize_planes

__all__ = ["SKIP_MARGIN", "BatchLabels", "count_labels", "may_exceed"]

SKIP_MARGIN = 1e-5
"""Relative margin of :func:`may_exceed`, far above the float32 rounding of a resize (a few ulps)."""


def may_exceed(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B,) bool: which slices of (B, H, W) probabilities may exceed ``threshold`` once resized.

    ``tevia.inference.transforms.resize_planes`` makes every output value a convex combination of input values
    (bilinear weights, or antialiasing weights normalised to sum to one), so it never exceeds the
    slice's maximum except by float rounding. A slice whose maximum is at most
    ``threshold * (1 - SKIP_MARGIN)`` thresholds to all zeros, resized or not. NaN never exceeds.
    """
    return probs.flatten(1).amax(dim=1) > threshold * (1.0 - SKIP_MARGIN)


class BatchLabels:
    """The labels of one batch of slices, built prompt by prompt into a view of the labelmap.

    A voxel takes label ``index + 1`` when prompt ``index``'s resized probability is above the
    threshold and above every earlier prompt's there (a tie keeps the earlier prompt).

    Args:
        target: (B, rows, columns) uint8 view of the labelmap (any strides), all zero; written
            in place.
        threshold: Probability above which a voxel is foreground, compared in float32 (as torch
            compares a float32 tensor with a Python float).
        prompts: How many prompts will be added.
    """

    def __init__(self, target: np.ndarray, threshold: float, prompts: int) -> None:
        if target.ndim != 3 or target.dtype != np.uint8:
            raise ValueError(f"target must be a (B, rows, columns) uint8 array, got {target.dtype} {target.shape}")
        self.target, self.threshold, self.prompts = target, float(threshold), int(prompts)
        self.resized_slices = 0
        self._best: torch.Tensor | None = None
        self._label: torch.Tensor | None = None

    def add(self, index: int, probs: torch.Tensor) -> None:
        """Add prompt ``index``'s (B, H, W) float32 CPU probabilities at the model's size."""
        hot = torch.nonzero(may_exceed(probs, self.threshold)).flatten()
        if len(hot) == 0:
            return
        whole = len(hot) == len(probs)
        resized = resize_planes(probs if whole else probs[hot], tuple(self.target.shape[1:]))
        self.resized_slices += len(hot)
        if self.prompts == 1:
            values = resized.numpy()
            for position, slice_index in enumerate(hot.tolist()):
                np.greater(values[position], np.float32(self.threshold),
                           out=self.target[slice_index].view(np.bool_))
            return
        if self._best is None:
            self._best = torch.zeros((len(probs), *resized.shape[1:]), dtype=torch.float32)
            self._label = torch.zeros((len(probs), *resized.shape[1:]), dtype=torch.uint8)
        if whole:
            wins = (resized > self.threshold) & (resized > self._best)
            self._best = torch.where(wins, resized, self._best)
            self._label[wins] = index + 1
        else:
            best, label = self._best[hot], self._label[hot]
            wins = (resized > self.threshold) & (resized > best)
            self._best[hot] = torch.where(wins, resized, best)
            label[wins] = index + 1
            self._label[hot] = label

    def finish(self) -> None:
        """Write the labels of several prompts into the target (one prompt is written as it comes)."""
        if self._label is not None:
            self.target[...] = self._label.numpy()


def count_labels(labels: np.ndarray, count: int) -> np.ndarray:
    """Voxels per label value 0..``count`` of a uint8 labelmap (no int64 copy, unlike np.bincount)."""
    flat = labels.reshape(-1)
    if count == 1:
        foreground = int(np.count_nonzero(flat))
        return np.array([flat.size - foreground, foreground])
    return torch.bincount(torch.from_numpy(np.ascontiguousarray(flat)), minlength=count + 1).numpy()
