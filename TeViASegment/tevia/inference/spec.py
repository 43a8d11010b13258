"""What callers need to know about a loaded model: its name, input size, sides and vocabulary."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ModelSpec"]


@dataclass
class ModelSpec:
    """What callers need to know about a loaded model."""

    name: str
    version: str
    image_size: tuple[int, int]
    in_channels: int
    modality: str = ""
    side_convention: str = "image"
    vocabulary: list[str] = field(default_factory=list)
    example_prompts: list[str] = field(default_factory=list)
    threshold: float = 0.5
    click_inputs: bool = False
    test_time_vertical_flip: bool = False
