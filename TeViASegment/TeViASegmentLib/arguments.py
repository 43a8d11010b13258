"""Checks of a segmentation request's arguments, with errors that name the argument."""

from __future__ import annotations

__all__ = ["DEVICES", "PRECISIONS", "prompt_list", "checked_options"]

DEVICES = ("auto", "cuda", "cpu", "mps")
PRECISIONS = ("fp32", "bf16")


def prompt_list(prompts) -> list[str]:
    """Prompts from a list, or from text with one prompt per line; whitespace collapsed.

    Raises:
        ValueError: when no prompt holds text.
    """
    lines = prompts.splitlines() if isinstance(prompts, str) else list(prompts or [])
    cleaned = [" ".join(str(p).split()) for p in lines if str(p).strip()]
    if not cleaned:
        raise ValueError(f"prompts must hold at least one non-empty prompt, got {prompts!r}")
    return cleaned


def checked_options(volume_node, segmentation_node, device: str, options: dict | None,
                    precision: str = "fp32") -> dict:
    """Check the nodes, device and precision; the worker options with the side convention filled in.

    Args:
        volume_node: must be a scalar volume node.
        segmentation_node: a segmentation node or None.
        device: one of DEVICES.
        precision: one of PRECISIONS.
        options: worker options; "convention" defaults to "patient" (one of
            `tevia.prompts.sides.CONVENTIONS`).

    Raises:
        ValueError: naming the argument and the value it got.
    """
    if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise ValueError(f"volumeNode must be a scalar volume node, got {volume_node}")
    if segmentation_node is not None and not segmentation_node.IsA("vtkMRMLSegmentationNode"):
        raise ValueError(f"segmentationNode must be a segmentation node or None, got {segmentation_node.GetClassName()}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    from tevia.prompts.sides import CONVENTIONS

    options = {"convention": "patient", **(options or {})}
    if options["convention"] not in CONVENTIONS:
        raise ValueError(f"options['convention'] must be one of {CONVENTIONS}, got {options['convention']!r}")
    return options
