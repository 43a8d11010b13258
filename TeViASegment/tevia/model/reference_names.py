"""Weights saved by the reference code (github jgfiuuuu/TeViA, `TeViaSeg`) under the
project's names, so that a reference state dict loads into a TeViANet built with the `paper`
preset (tevia.model.build) and computes what the reference computed.

Only renaming happens here: the reference's sinusoidal position buffers (`*_pos.pe`) follow
from their formula (tevia.model.positions), its unused parts (`conv1..3`, the encoders'
projection heads, ConvNeXt's final pooled-output LayerNorm) have no counterpart, and the frozen
text encoder is a separate module (tevia.model.text) loaded from its own folder.
"""

from __future__ import annotations

import re

import torch

from tevia.model.network import TeViANet

__all__ = ["reference_to_project", "load_reference_state_dict"]

_STAGES = {"decoder16": "stages.0", "decoder8": "stages.1", "decoder4": "stages.2"}
# Prefix renames inside a stage (reference GuideDecoder -> GuidedDecoderStage).
_STAGE_PARTS = [
    ("guide_layer.scale", "cross_scale"),
    ("guide_layer.prompt", "text_projection.prompt"),
    ("guide_layer.text_project.0.", "text_projection.mix."),
    ("guide_layer.text_project.2.", "text_projection.proj."),
    ("guide_layer.self_attn_norm.", "self_attention_norm."),
    ("guide_layer.cross_attn_norm.", "cross_attention_norm."),
    ("guide_layer.self_attn.", "self_attention."),
    ("guide_layer.cross_attn.", "cross_attention."),
    ("guide_layer.norm1.", "norm1."),
    ("guide_layer.norm2.", "norm2."),
    ("decoder.", "up."),
]
_TOP = [("decoder1.", "upsample."), ("out.conv.conv.", "out."), ("encoder.model.", "encoder.backbone.")]
_DROPPED = re.compile(r"^(decoder(16|8|4)\.guide_layer\.(vis|txt)_pos\.pe|conv[123]\..*|text_encoder\..*"
                      r"|encoder\.project_head\..*|encoder\.model\.layernorm\..*)$")


def _rename(name: str) -> str | None:
    if _DROPPED.match(name):
        return None
    stage, _, rest = name.partition(".")
    if stage in _STAGES:
        for old, new in _STAGE_PARTS:
            if rest.startswith(old):
                return f"{_STAGES[stage]}.{new}{rest[len(old):]}"
    for old, new in _TOP:
        if name.startswith(old):
            return new + name[len(old):]
    raise ValueError(f"reference weight {name!r} has no counterpart in the project's network")


def reference_to_project(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A reference state dict (`TeViaSeg`'s, or a Lightning checkpoint's with the `model.`
    prefix of its wrapper) under the project's names; ValueError for an unknown name."""
    out = {}
    for name, value in state.items():
        new = _rename(name.removeprefix("model."))
        if new is not None:
            out[new] = value
    return out


def load_reference_state_dict(network: TeViANet, state: dict[str, torch.Tensor]) -> list[str]:
    """Loads reference weights into `network` (built with the `paper` preset's architecture).

    Every renamed weight must fit; the network's own parts the reference has no weights for
    (the encoder when only the decoder is given, the prototype, the pixel statistics) are
    left as they are and returned. ValueError when a weight does not fit.
    """
    renamed = reference_to_project(state)
    try:
        result = network.load_state_dict(renamed, strict=False)
    except RuntimeError as exc:  # a size mismatch
        raise ValueError(f"reference weights do not fit this network (build it with the `paper` preset's "
                         f"architecture keys and the reference's widths): {exc}") from exc
    if result.unexpected_keys:
        raise ValueError(f"reference weights with no place in this network: {result.unexpected_keys[:8]} "
                         "(build it with the `paper` preset's architecture keys)")
    return list(result.missing_keys)
