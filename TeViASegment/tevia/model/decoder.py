"""Text-guided decoder stages: visual self-attention, cross-attention to the projected text,
then a UNETR-style up-block with the skip feature map.
"""

from __future__ import annotations

import functools
import math

import torch
from monai.networks.blocks import UnetrUpBlock
from torch import nn

__all__ = ["TextProjection", "GuidedDecoderStage", "sinusoidal_positions", "cached_positions"]


def sinusoidal_positions(height: int, width: int, dim: int, device: torch.device) -> torch.Tensor:
    """2D sine-cosine position codes, (H*W, dim): half the channels encode rows, half columns."""
    quarter = max(dim // 4, 1)
    freq = torch.exp(torch.arange(quarter, device=device, dtype=torch.float32) * (-math.log(10000.0) / quarter))
    rows = torch.arange(height, device=device, dtype=torch.float32)[:, None] * freq  # (H, q)
    cols = torch.arange(width, device=device, dtype=torch.float32)[:, None] * freq  # (W, q)
    row_code = torch.cat([rows.sin(), rows.cos()], 1)[:, None, :].expand(height, width, 2 * quarter)
    col_code = torch.cat([cols.sin(), cols.cos()], 1)[None, :, :].expand(height, width, 2 * quarter)
    codes = torch.cat([row_code, col_code], -1).reshape(height * width, 4 * quarter)
    return nn.functional.pad(codes, (0, dim - codes.shape[1]))


@functools.lru_cache(maxsize=32)
def cached_positions(height: int, width: int, dim: int, device: torch.device) -> torch.Tensor:
    """`sinusoidal_positions`, computed once per (height, width, dim, device); read-only.

    Made outside inference mode and autograd so that one tensor serves training and inference.
    """
    with torch.inference_mode(False), torch.no_grad():
        return sinusoidal_positions(height, width, dim, device)


class TextProjection(nn.Module):
    """Text (B, T, D) -> (B, tokens, width): mix tokens (1x1 conv over the token axis),
    project to the stage width, LeakyReLU, then a learnable per-token multiplicative prompt."""

    def __init__(self, in_tokens: int, out_tokens: int, text_dim: int, width: int) -> None:
        super().__init__()
        self.mix = nn.Conv1d(in_tokens, out_tokens, kernel_size=1)
        self.proj = nn.Linear(text_dim, width)
        self.act = nn.LeakyReLU()
        self.prompt = nn.Parameter(torch.zeros(out_tokens, width))

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        t = self.act(self.proj(self.mix(text)))
        return t + t * self.prompt


class GuidedDecoderStage(nn.Module):
    """One stage: x (B, C_in, h, w), skip (B, C_skip, 2h, 2w), text (B, T, D) -> (B, C_skip, 2h, 2w).

    Also returns the stage's projected text (B, tokens, C_in) for the alignment loss. The
    prototype modulation p (C_in,) multiplies into the self-attention queries and keys.
    """

    def __init__(self, in_channels: int, skip_channels: int, text_tokens: int, text_dim: int,
                 stage_tokens: int, self_heads: int = 1, cross_heads: int = 4) -> None:
        super().__init__()
        for name, heads in (("self_attention_heads", self_heads), ("cross_attention_heads", cross_heads)):
            if in_channels % heads:
                raise ValueError(f"{name}={heads} must divide the stage width {in_channels}")
        self.text_projection = TextProjection(text_tokens, stage_tokens, text_dim, in_channels)
        self.norm1 = nn.LayerNorm(in_channels)
        self.self_attention = nn.MultiheadAttention(in_channels, self_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(in_channels)
        self.cross_attention = nn.MultiheadAttention(in_channels, cross_heads, batch_first=True)
        self.cross_scale = nn.Parameter(torch.tensor(0.01))
        self.up = UnetrUpBlock(2, in_channels, skip_channels, kernel_size=3, upsample_kernel_size=2,
                               norm_name="batch", res_block=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, text: torch.Tensor,
                prototype: torch.Tensor | None = None, fresh_positions: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, h*w, C); a view (no copy) when x is channels_last
        positions = sinusoidal_positions if fresh_positions else cached_positions
        pos = positions(h, w, c, x.device).to(tokens.dtype)
        y = self.norm1(tokens)
        qk = y + pos
        if prototype is not None:
            p = prototype.to(qk.dtype)
            qk = qk * p + qk
        tokens = tokens + self.self_attention(qk, qk, y, need_weights=False)[0]
        stage_text = self.text_projection(text)
        y = self.norm2(tokens)
        tokens = tokens + self.cross_scale * self.cross_attention(y + pos, stage_text, stage_text, need_weights=False)[0]
        x = tokens.transpose(1, 2).reshape(b, c, h, w)
        return self.up(x, skip), stage_text
