"""Training augmentations on a batch (B, C, H, W) image in [0, 1] with its (B, 1, H, W) mask.

`train.augmentation` chooses one: "affine" (the project's), "zoom" (the reference code's
MONAI RandZoomd: with probability 0.1 per image a centred zoom by 0.95-1.2, bicubic for the
image, nearest for the mask, edge padding, the size kept) or "scanner" (`scanner_batch`: the
affine one with wider ranges plus what another scanner or reconstruction changes: gamma, noise,
a circular field of view). None of the three flips left-right: descriptions name sides. `train.vertical_flip` adds up-down flips (`flip_vertically`), which keep the sides and
so every description that names no vertical position (CT slices of prone patients, or stored
upside down, look like that). `train.horizontal_flip` adds left-right flips (`flip_sides`) that
swap the words "left" and "right" of the flipped image's description, so the text stays true.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

from tevia.prompts import normalise_prompt, swap_sides

__all__ = ["AUGMENTATIONS", "augment_batch", "zoom_batch", "scanner_batch", "augment", "names_vertical_position",
           "flip_vertically", "flip_sides", "mirrored_text"]

AUGMENTATIONS = ("affine", "zoom", "scanner")

# Words whose meaning an up-down flip inverts (QaTa's lung zones say "upper", "middle", "lower").
_VERTICAL_WORDS = re.compile(r"\b(upper|lower|middle|top|bottom|apex|apical|apices|base|basal|bases|superior|inferior)\b",
                             re.IGNORECASE)


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, generator=generator) * (hi - lo) + lo).to(device)


def _affine(image: torch.Tensor, mask: torch.Tensor, degrees: float, scale: tuple[float, float], shift: float,
            generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One random rotation (+-degrees), scale (> 1 magnifies) and shift (fraction of the side) per
    image, the same for its mask (bilinear, then > 0.5)."""
    b, dev = image.shape[0], image.device
    angle = _uniform(b, -math.radians(degrees), math.radians(degrees), generator, dev)
    factor = _uniform(b, *scale, generator, dev)
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.stack([torch.stack([cos, -sin, _uniform(b, -shift, shift, generator, dev)], 1),
                         torch.stack([sin, cos, _uniform(b, -shift, shift, generator, dev)], 1)], 1)
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    image = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mask = (F.grid_sample(mask, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5).float()
    return image, mask


def _gain_bias(image: torch.Tensor, gain: tuple[float, float], bias: float,
               generator: torch.Generator | None) -> torch.Tensor:
    b, dev = image.shape[0], image.device
    return image * _uniform(b, *gain, generator, dev).view(b, 1, 1, 1) + _uniform(b, -bias, bias, generator, dev).view(b, 1, 1, 1)


def augment_batch(image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random small affine (rotation +-10 deg, scale 0.9-1.1, shift +-6%) and intensity jitter."""
    image, mask = _affine(image, mask, 10.0, (0.9, 1.1), 0.06, generator)
    return _gain_bias(image, (0.85, 1.15), 0.08, generator).clamp(0, 1), mask


def scanner_batch(image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None,
                  fov_prob: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """What another scanner or reconstruction of the same anatomy changes, for training that must
    carry over to other acquisitions (CT scans from other sites): rotation +-15 deg, scale
    0.85-1.35 (zoomed fields of view), shift +-8%; gain 0.75-1.3, bias +-0.12, gamma 0.7-1.4,
    Gaussian noise (sigma up to 0.04); and, with probability `fov_prob`, a circular field of view
    (radius 0.42-0.5 of the side, dark outside, as reconstructions cropped to the scanner's bore
    show), outside which the mask is cleared too."""
    b, dev = image.shape[0], image.device
    image, mask = _affine(image, mask, 15.0, (0.85, 1.35), 0.08, generator)
    gamma = _uniform(b, 0.7, 1.4, generator, dev).view(b, 1, 1, 1)
    image = _gain_bias(image.clamp(0, 1) ** gamma, (0.75, 1.3), 0.12, generator)
    sigma = _uniform(b, 0.0, 0.04, generator, dev).view(b, 1, 1, 1)
    image = image + sigma * torch.randn(image.shape, generator=generator).to(dev)
    height, width = image.shape[-2:]
    rows = (torch.arange(height, device=dev, dtype=image.dtype) + 0.5) / height - 0.5
    columns = (torch.arange(width, device=dev, dtype=image.dtype) + 0.5) / width - 0.5
    radius = torch.sqrt(rows.view(-1, 1) ** 2 + columns.view(1, -1) ** 2)
    limit = _uniform(b, 0.42, 0.5, generator, dev).view(b, 1, 1, 1)
    chosen = (torch.rand(b, generator=generator) < fov_prob).to(dev).view(b, 1, 1, 1)
    outside = chosen & (radius > limit)
    fill = _uniform(b, 0.0, 0.1, generator, dev).view(b, 1, 1, 1)
    return torch.where(outside, fill, image).clamp(0, 1), torch.where(outside, torch.zeros_like(mask), mask)


def zoom_batch(image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None,
               prob: float = 0.1, min_zoom: float = 0.95, max_zoom: float = 1.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image, with probability `prob`, zoomed about its centre by a factor in [min_zoom,
    max_zoom] (> 1 magnifies); the others unchanged."""
    b, dev = image.shape[0], image.device
    chosen = (torch.rand(b, generator=generator) < prob).to(dev)
    factor = torch.where(chosen, _uniform(b, min_zoom, max_zoom, generator, dev), torch.ones(b, device=dev))
    if not bool(chosen.any()):
        return image, mask
    zeros = torch.zeros(b, device=dev)
    theta = torch.stack([torch.stack([1 / factor, zeros, zeros], 1), torch.stack([zeros, 1 / factor, zeros], 1)], 1)
    grid = F.affine_grid(theta.to(image.dtype), list(image.shape), align_corners=False)
    zoomed = F.grid_sample(image, grid, mode="bicubic", padding_mode="border", align_corners=False).clamp(0, 1)
    zoomed_mask = F.grid_sample(mask, grid, mode="nearest", padding_mode="border", align_corners=False)
    keep = chosen.view(b, 1, 1, 1)
    return torch.where(keep, zoomed, image), torch.where(keep, zoomed_mask, mask)


def names_vertical_position(text: str) -> bool:
    """True when a description names a vertical position ("lower left lung"): an up-down flip
    would make it false."""
    return _VERTICAL_WORDS.search(text) is not None


def flip_vertically(image: torch.Tensor, mask: torch.Tensor, texts: list[str],
                    generator: torch.Generator | None = None, prob: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image whose text names no vertical position, with probability `prob`, flipped up-down
    with its mask (B, C, H, W); the others unchanged. Left and right stay where they were."""
    if len(texts) != image.shape[0]:
        raise ValueError(f"texts must hold one description per image ({image.shape[0]}), got {len(texts)}")
    allowed = torch.tensor([not names_vertical_position(t) for t in texts])
    chosen = ((torch.rand(image.shape[0], generator=generator) < prob) & allowed).to(image.device).view(-1, 1, 1, 1)
    return torch.where(chosen, image.flip(-2), image), torch.where(chosen, mask.flip(-2), mask)


def mirrored_text(text: str) -> str:
    """The description of an image's left-right mirror: normalised, "left" and "right" swapped."""
    return swap_sides(normalise_prompt(text))


def flip_sides(image: torch.Tensor, mask: torch.Tensor, texts: list[str], generator: torch.Generator | None = None,
               prob: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Each image, with probability `prob`, flipped left-right with its mask (B, C, H, W), and its
    description replaced by `mirrored_text` (the side words swapped); the others unchanged."""
    if len(texts) != image.shape[0]:
        raise ValueError(f"texts must hold one description per image ({image.shape[0]}), got {len(texts)}")
    chosen = torch.rand(image.shape[0], generator=generator) < prob
    texts = [mirrored_text(t) if c else t for t, c in zip(texts, chosen.tolist())]
    chosen = chosen.to(image.device).view(-1, 1, 1, 1)
    return torch.where(chosen, image.flip(-1), image), torch.where(chosen, mask.flip(-1), mask), texts


def augment(kind: str, image: torch.Tensor, mask: torch.Tensor,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The augmentation `kind` names (one of AUGMENTATIONS)."""
    if kind == "affine":
        return augment_batch(image, mask, generator)
    if kind == "zoom":
        return zoom_batch(image, mask, generator)
    if kind == "scanner":
        return scanner_batch(image, mask, generator)
    raise ValueError(f"train.augmentation must be one of {AUGMENTATIONS}, got {kind!r}")
