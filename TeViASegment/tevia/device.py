"""Device choice (auto = CUDA, then Apple MPS, then CPU) and out-of-memory detection."""

from __future__ import annotations

import logging

import torch

__all__ = ["DEVICE_CHOICES", "resolve_device", "is_out_of_memory", "describe_device"]

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(requested: str = "auto") -> str:
    """Turn a device request into a concrete torch device string.

    Args:
        requested: "auto", "cpu", "cuda", "cuda:N" or "mps".

    Returns:
        "cuda" (or "cuda:N"), "mps" or "cpu".

    Raises:
        ValueError: an unknown name, or a forced device that this machine's torch cannot use
            (the message says how to fix it).
    """
    name = str(requested).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mps_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name == "mps":
        if not _mps_available():
            raise ValueError("device 'mps' requested but Apple MPS is not available here: use 'auto' or 'cpu'")
        return "mps"
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {requested!r} requested but CUDA is not available (torch {torch.__version__}, "
                f"CUDA build {torch.version.cuda or 'none'}): install a CUDA build of torch or use 'auto' or 'cpu'"
            )
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ValueError(f"device {requested!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return name
    raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N), got {requested!r}")


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
