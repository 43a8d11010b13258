"""Text-to-vision alignment: the segmentation head's foreground representation supervises
the projected text of each decoder stage.

For a sample, the head features (C, H, W) are masked by the ground truth and pooled to the
stage's width; the stage's projected text (tokens, width) is mean-pooled over tokens; the loss
is 1 - cosine between the two, averaged over stages and samples. The visual side is detached:
only the text projections learn from it.

Two poolings (`model.foreground_pooling`):
- "average": the masked features flattened (C*H*W values) and average-pooled to the width;
- "resize": the reference code's: a bilinear resize of the masked map to s x s, then a
  bilinear resize over the channel axis (C -> c), flattened to c*s*s = width (768 = 3x16x16,
  384 = 6x8x8, 192 = 3x8x8: s is the largest power of two with 3*s*s <= width dividing it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["FOREGROUND_POOLINGS", "foreground_vectors", "resize_layout", "alignment_loss"]

FOREGROUND_POOLINGS = ("average", "resize")


def resize_layout(width: int) -> tuple[int, int]:
    """(channels c, side s) with c*s*s = width for the "resize" pooling; ValueError if none."""
    side = 1
    while 3 * (2 * side) ** 2 <= width and width % (2 * side) ** 2 == 0:
        side *= 2
    if 3 * side * side > width:
        raise ValueError(f"foreground_pooling 'resize' needs a stage width of at least 3, got {width}")
    return width // (side * side), side


def _resize_pool(masked: torch.Tensor, width: int) -> torch.Tensor:
    channels, side = resize_layout(width)
    x = F.interpolate(masked, size=(side, side), mode="bilinear", align_corners=False)  # (B, C, s, s)
    x = x.permute(0, 2, 3, 1)  # (B, s, s, C): rows act as channels, (columns, C) as the plane
    x = F.interpolate(x, size=(side, channels), mode="bilinear", align_corners=False)  # (B, s, s, c)
    return x.permute(0, 3, 1, 2).reshape(x.shape[0], -1)  # (B, c*s*s)


def foreground_vectors(head_features: torch.Tensor, mask: torch.Tensor, widths: list[int],
                       pooling: str = "average") -> list[torch.Tensor]:
    """Foreground representations, one (B, width) tensor per width.

    Args:
        head_features: (B, C, H, W) features of the segmentation head.
        mask: (B, 1, H, W) ground truth in {0, 1}.
        widths: target widths (the decoder stages' widths).
        pooling: "average" or "resize" (see the module docstring).
    """
    if head_features.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match head features {tuple(head_features.shape)}")
    masked = head_features.detach() * mask
    if pooling == "average":
        flat = masked.flatten(1).unsqueeze(1)  # (B, 1, C*H*W)
        return [F.adaptive_avg_pool1d(flat, w).squeeze(1) for w in widths]
    if pooling == "resize":
        return [_resize_pool(masked, w) for w in widths]
    raise ValueError(f"model.foreground_pooling must be one of {FOREGROUND_POOLINGS}, got {pooling!r}")


def alignment_loss(stage_text: list[torch.Tensor], foreground: list[torch.Tensor], mask: torch.Tensor,
                   skip_empty: bool = True) -> torch.Tensor:
    """Mean (1 - cos) between each stage's mean-pooled text (B, T_i, W_i) and foreground (B, W_i).

    skip_empty: samples with an empty mask have no foreground and are left out (0 when all
    are empty). False counts them as the reference does: their cosine is 0, a constant 1 in
    the mean that carries no gradient but shrinks the others' weight.
    """
    keep = mask.flatten(1).amax(1) > 0 if skip_empty else torch.ones(mask.shape[0], dtype=torch.bool, device=mask.device)
    if not bool(keep.any()):
        return mask.new_zeros(())
    losses = []
    for text, fg in zip(stage_text, foreground):
        cos = F.cosine_similarity(text.mean(1)[keep], fg[keep], dim=-1)
        losses.append((1.0 - cos).mean())
    return torch.stack(losses).mean()
