"""Devices: choosing one (``select_device``), out-of-memory detection, descriptions,
and the inference precisions."""

from __future__ import annotations

import argparse

import torch

__all__ = ["select_device", "DEVICE_CHOICES", "PRECISIONS", "add_precision_argument", "check_precision", "is_out_of_memory",
           "describe_device"]

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")

# fp32: the plain path. bf16: convolutions and matrix products in bfloat16 (torch.autocast), about
# 1.7x faster on CPUs with AVX512-BF16/AMX and on recent GPUs; probabilities differ from fp32 by
# about 1e-3 (bench/engine.json measures it), so it is an option, never the default.
PRECISIONS = ("fp32", "bf16")


def select_device(device: str = "auto") -> torch.device:
    """auto: CUDA, then Apple MPS, then CPU; or a forced "cpu", "cuda", "cuda:1", "mps"."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device must be auto, cpu, cuda[:N] or mps, got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available to this torch build; use auto or cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' was asked for but Apple MPS is not available; use auto or cpu")
    return dev


def check_precision(precision: str, device: torch.device) -> None:
    """Raise ValueError unless ``precision`` is one of PRECISIONS and runs on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and device.type not in ("cpu", "cuda"):
        raise ValueError(f"precision bf16 runs on cpu or cuda, not {device.type}; use precision fp32")


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--precision`` option of the commands that run a model."""
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="bf16: bfloat16 autocast, faster on CPUs with AVX512-BF16 and on GPUs, "
                             "probabilities within ~1e-3 of fp32 (default: fp32)")


def is_out_of_memory(error: BaseException) -> bool:
    """True for a device out-of-memory error (CUDA or MPS) that a smaller batch may avoid."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def describe_device(device: str | torch.device) -> str:
    """A short human description, e.g. "cuda (NVIDIA H100, 79 GiB)" or "cpu (2 threads)"."""
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"cuda ({props.name}, {props.total_memory / 1024**3:.0f} GiB)"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type
