"""Text-to-vision alignment: the segmentation head's foreground representation supervises
the projected text of each decoder stage.

For a sample, the head features (C, H, W) are masked by the ground truth, flattened and
average-pooled to the stage's width; the stage's projected text (tokens, width) is
mean-pooled over tokens; the loss is 1 - cosine between the two, averaged over stages and
samples. The visual side is detached: only the text projections learn from it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["foreground_vectors", "alignment_loss"]


def foreground_vectors(head_features: torch.Tensor, mask: torch.Tensor, widths: list[int]) -> list[torch.Tensor]:
    """Foreground representations, one (B, width) tensor per width.

    Args:
        head_features: (B, C, H, W) features of the segmentation head.
        mask: (B, 1, H, W) ground truth in {0, 1}.
        widths: target widths (the decoder stages' widths).
    """
    if head_features.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match head features {tuple(head_features.shape)}")
    masked = (head_features.detach() * mask).flatten(1).unsqueeze(1)  # (B, 1, C*H*W)
    return [F.adaptive_avg_pool1d(masked, w).squeeze(1) for w in widths]


def alignment_loss(stage_text: list[torch.Tensor], foreground: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Mean (1 - cos) between each stage's mean-pooled text (B, T_i, W_i) and foreground (B, W_i).

    Samples with an empty mask have no foreground and are left out (0 when all are empty).
    """
    has_fg = mask.flatten(1).amax(1) > 0
    if not bool(has_fg.any()):
        return mask.new_zeros(())
    losses = []
    for text, fg in zip(stage_text, foreground):
        cos = F.cosine_similarity(text.mean(1)[has_fg], fg[has_fg], dim=-1)
        losses.append((1.0 - cos).mean())
    return torch.stack(losses).mean()
