"""The model-input transforms, one copy for training, evaluation and the volume pipeline.

What the network sees must not depend on which front end fed it, so every path resizes and
encodes through these functions:

- :func:`resize_planes`: bilinear resize of image planes (or probability maps) of any size,
  antialiased when shrinking. Images go to the model's input size with it (the training data
  set, ``tevia evaluate``, the slice-by-slice volume pipeline), and the model's probabilities
  come back to the data's size with it (evaluation and the volume labelling).
- :func:`model_input`: images at any size -> the layout and size ``Segmenter.encode_images`` takes.
- :func:`model_text`: a data set's description -> the text the model encodes ("" for no text,
  else :func:`tevia.prompts.normalise_prompt`, the normalisation inference applies to a prompt).

Training embeds its descriptions with ``tevia.inference.text_cache.text_table``: :func:`model_text`
through the text embedding cache that ``Segmenter.encode_text`` uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from tevia.prompts import normalise_prompt

if TYPE_CHECKING:
    from tevia.inference.spec import ModelSpec

__all__ = ["resize_planes", "model_input", "model_text"]


def resize_planes(planes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (pixel centres aligned) of the last two axes, antialiased when shrinking.

    Every output value is a convex combination of input values of its plane (the bilinear
    weights, or the antialiasing weights normalised to sum to one), which
    ``tevia.volume.labelling.may_exceed`` relies on.

    Args:
        planes: float tensor (..., H, W): slices (B, H, W), images (B, C, H, W) or one (H, W).
        size: the (H', W') to resize to.

    Returns:
        (..., H', W'); ``planes`` itself when it already has that size.
    """
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (H, W) with positive sizes, got {size!r}")
    size = (int(size[0]), int(size[1]))
    if tuple(planes.shape[-2:]) == size:
        return planes
    shrink = planes.shape[-2] > size[0] or planes.shape[-1] > size[1]
    flat = planes.reshape(-1, 1, *planes.shape[-2:])
    resized = F.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return resized.reshape(*planes.shape[:-2], *size)


def model_input(images: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Images at any size, resized to the model's, in the layout ``Segmenter.encode_images`` takes.

    Args:
        images: float32 in [0, 1]: (B, C, H, W) with the model's channels (a data set's batch),
            or (B, H, W) grayscale slices (the volume pipeline's) for a 1-channel model.
        spec: the model's ``tevia.inference.spec.ModelSpec`` (image_size, in_channels).

    Returns:
        (B, H', W') for a 1-channel model, (B, 3, H', W') for a 3-channel one, at spec.image_size.

    Raises:
        ValueError: images of another shape, or of other channels than the model's.
    """
    channels = spec.in_channels
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be (B, C, H, W) or (B, H, W), got shape {tuple(images.shape)}")
    given = 1 if images.ndim == 3 else images.shape[1]
    if given != channels:
        raise ValueError(f"got {given}-channel images but the model takes {channels}; "
                         f"build the data set with channels={channels}")
    resized = resize_planes(images, tuple(spec.image_size))
    return resized[:, 0] if resized.ndim == 4 and channels == 1 else resized


def model_text(text: str) -> str:
    """The text the model encodes for a description: "" (no text) when it is blank, else
    ``normalise_prompt(text)``, as inference normalises a typed prompt."""
    return normalise_prompt(text) if text.strip() else ""
