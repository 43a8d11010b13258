"""Sinusoidal position codes for the decoder's attention: 2D (rows and columns) or 1D (the
classic Transformer formula over a flattened order, as the reference code uses)."""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

__all__ = ["POSITION_CODES", "sinusoidal_positions", "sequence_positions", "grid_positions", "cached_grid_positions"]

POSITION_CODES = ("2d", "1d")


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


def sequence_positions(length: int, dim: int, device: torch.device) -> torch.Tensor:
    """1D sine-cosine codes (length, dim): even channels sin(pos * f_i), odd channels cos(pos * f_i),
    f_i = 10000^(-2i/dim). The products are formed from integer positions and float32
    frequencies, in the same order of operations as the reference, so the codes are bitwise
    the same (at position ~800 a one-ulp difference in the angle would move a code by ~5e-5)."""
    freq = torch.exp(torch.arange(0, dim, 2, device=device) * -(math.log(10000.0) / dim))
    angle = torch.arange(0, length, device=device).unsqueeze(1) * freq
    codes = torch.zeros(length, dim, device=device)
    codes[:, 0::2] = torch.sin(angle)
    codes[:, 1::2] = torch.cos(angle[:, : dim // 2])
    return codes


def grid_positions(kind: str, height: int, width: int, dim: int, device: torch.device) -> torch.Tensor:
    """The (H*W, dim) codes of a feature map: `kind` "2d" (row/column) or "1d" (flattened order)."""
    if kind == "2d":
        return sinusoidal_positions(height, width, dim, device)
    if kind == "1d":
        return sequence_positions(height * width, dim, device)
    raise ValueError(f"position codes must be one of {POSITION_CODES}, got {kind!r}")


@functools.lru_cache(maxsize=32)
def cached_grid_positions(kind: str, height: int, width: int, dim: int, device: torch.device) -> torch.Tensor:
    """`grid_positions`, computed once per arguments; read-only.

    Made outside inference mode and autograd so that one tensor serves training and inference.
    """
    with torch.inference_mode(False), torch.no_grad():
        return grid_positions(kind, height, width, dim, device)
