"""Device helpers around ``tevia.inference.select_device``: out-of-memory detection, descriptions."""

from __future__ import annotations

import torch

__all__ = ["DEVICE_CHOICES", "is_out_of_memory", "describe_device"]

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


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
