"""Text-guided decoder stages: visual self-attention, cross-attention to the projected text,
then a UNETR-style up-block with the skip feature map.

`StageOptions` holds the choices where the project departs from the reference code; with
`StageOptions.reference()` a stage computes what the reference's `GuideDecoder` computes
(docs/FIDELITY.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.blocks import UnetrUpBlock
from torch import nn

from tevia.model.positions import POSITION_CODES, cached_grid_positions, grid_positions

__all__ = ["StageOptions", "TextProjection", "GuidedDecoderStage", "UP_BLOCKS"]

UP_BLOCKS = ("residual", "basic")


@dataclass(frozen=True)
class StageOptions:
    """Per-stage architecture choices (defaults: the project's).

    text_projection_gelu: GELU between the token-mixing conv and the Linear of the text projection.
    attention_output_norms: a LayerNorm on each attention's output before it is added.
    text_key_positions: 1D sinusoidal codes added to the cross-attention's text keys.
    position_codes: "2d" (row/column codes) or "1d" (over the flattened pixel order).
    up_block: MONAI UnetrUpBlock with its "residual" or its "basic" conv block.
    """

    text_projection_gelu: bool = False
    attention_output_norms: bool = False
    text_key_positions: bool = False
    position_codes: str = "2d"
    up_block: str = "residual"

    def __post_init__(self) -> None:
        if self.position_codes not in POSITION_CODES:
            raise ValueError(f"model.position_codes must be one of {POSITION_CODES}, got {self.position_codes!r}")
        if self.up_block not in UP_BLOCKS:
            raise ValueError(f"model.up_block must be one of {UP_BLOCKS}, got {self.up_block!r}")


class TextProjection(nn.Module):
    """Text (B, T, D) -> (B, tokens, width): mix tokens (1x1 conv over the token axis),
    optionally GELU, project to the stage width, LeakyReLU, then a learnable per-token
    multiplicative prompt."""

    def __init__(self, in_tokens: int, out_tokens: int, text_dim: int, width: int, gelu: bool = False) -> None:
        super().__init__()
        self.mix = nn.Conv1d(in_tokens, out_tokens, kernel_size=1)
        self.mix_act = nn.GELU() if gelu else nn.Identity()
        self.proj = nn.Linear(text_dim, width)
        self.act = nn.LeakyReLU()
        self.prompt = nn.Parameter(torch.zeros(out_tokens, width))

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        t = self.act(self.proj(self.mix_act(self.mix(text))))
        return t + t * self.prompt


class GuidedDecoderStage(nn.Module):
    """One stage: x (B, C_in, h, w), skip (B, C_skip, 2h, 2w), text (B, T, D) -> (B, C_skip, 2h, 2w).

    Also returns the stage's projected text (B, tokens, C_in) for the alignment loss. The
    prototype modulation p (C_in,) multiplies into the self-attention queries and keys.
    """

    def __init__(self, in_channels: int, skip_channels: int, text_tokens: int, text_dim: int,
                 stage_tokens: int, self_heads: int = 1, cross_heads: int = 4,
                 options: StageOptions = StageOptions()) -> None:
        super().__init__()
        for name, heads in (("self_attention_heads", self_heads), ("cross_attention_heads", cross_heads)):
            if in_channels % heads:
                raise ValueError(f"{name}={heads} must divide the stage width {in_channels}")
        self.options = options
        self.text_projection = TextProjection(text_tokens, stage_tokens, text_dim, in_channels,
                                              options.text_projection_gelu)
        self.norm1 = nn.LayerNorm(in_channels)
        self.self_attention = nn.MultiheadAttention(in_channels, self_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(in_channels)
        self.cross_attention = nn.MultiheadAttention(in_channels, cross_heads, batch_first=True)
        if options.attention_output_norms:
            self.self_attention_norm = nn.LayerNorm(in_channels)
            self.cross_attention_norm = nn.LayerNorm(in_channels)
        else:
            self.self_attention_norm = self.cross_attention_norm = nn.Identity()
        self.cross_scale = nn.Parameter(torch.tensor(0.01))
        self.up = UnetrUpBlock(2, in_channels, skip_channels, kernel_size=3, upsample_kernel_size=2,
                               norm_name="batch", res_block=options.up_block == "residual")

    def forward(self, x: torch.Tensor, skip: torch.Tensor, text: torch.Tensor,
                prototype: torch.Tensor | None = None, fresh_positions: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, h*w, C); a view (no copy) when x is channels_last
        positions = grid_positions if fresh_positions else cached_grid_positions
        kind = self.options.position_codes
        pos = positions(kind, h, w, c, x.device).to(tokens.dtype)
        y = self.norm1(tokens)
        qk = y + pos
        if prototype is not None:
            p = prototype.to(qk.dtype)
            qk = qk * p + qk
        tokens = tokens + self.self_attention_norm(self.self_attention(qk, qk, y, need_weights=False)[0])
        stage_text = self.text_projection(text)
        keys = stage_text
        if self.options.text_key_positions:
            keys = keys + positions("1d", 1, keys.shape[1], c, x.device).to(keys.dtype)
        y = self.norm2(tokens)
        attended = self.cross_attention(y + pos, keys, stage_text, need_weights=False)[0]
        tokens = tokens + self.cross_scale * self.cross_attention_norm(attended)
        x = tokens.transpose(1, 2).reshape(b, c, h, w)
        return self.up(x, skip), stage_text
