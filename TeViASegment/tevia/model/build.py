"""Builders: a ModelConfig -> (TeViANet, TextEncoder), and named configurations."""

from __future__ import annotations

import dataclasses

from tevia.config import ModelConfig, TextConfig, VisionConfig
from tevia.model.decoder import StageOptions
from tevia.model.network import TeViANet
from tevia.model.text import TextEncoder
from tevia.model.vision import build_vision_encoder

__all__ = ["build_network", "build_text_encoder", "MODEL_PRESETS", "REFERENCE_ARCHITECTURE"]


def build_text_encoder(config: ModelConfig) -> TextEncoder:
    return TextEncoder(config.text.source, config.text.pretrained, config.text.max_tokens)


def build_network(config: ModelConfig, text_dim: int, pretrained_vision: bool | None = None) -> TeViANet:
    """The network of a config. `pretrained_vision=False` skips loading encoder weights
    (used when a checkpoint's weights are loaded next)."""
    vision = config.vision
    if pretrained_vision is not None:
        vision = dataclasses.replace(vision, pretrained=pretrained_vision and vision.pretrained)
    size = tuple(config.image_size)
    if len(size) != 2 or size[0] % 32 or size[1] % 32:
        raise ValueError(f"model.image_size must be two values divisible by 32, got {config.image_size}")
    return TeViANet(
        build_vision_encoder(vision),
        text_tokens=config.text.max_tokens,
        text_dim=text_dim,
        neck_channels=list(config.neck_channels),
        stage_tokens=list(config.stage_tokens),
        in_channels=config.in_channels,
        head_channels=config.head_channels,
        self_heads=config.self_attention_heads,
        cross_heads=config.cross_attention_heads,
        momentum=config.prototype_momentum,
        pixel_mean=list(config.pixel_mean),
        pixel_std=list(config.pixel_std),
        stage_options=StageOptions(config.text_projection_gelu, config.attention_output_norms,
                                   config.text_key_positions, config.position_codes, config.up_block),
        head_activation=config.head_activation,
        foreground_pooling=config.foreground_pooling,
        prototype_range_eps=config.prototype_range_eps,
        pixel_normalisation=config.pixel_normalisation,
        click_inputs=config.click_inputs,
        click_encoding=config.click_encoding,
        click_context=config.click_context,
    )


# The architecture keys on which the reference code differs from the project's defaults
# (docs/FIDELITY.md); Testing/tevia/model/test_reference_fixture.py proves that a network
# built with them computes what the reference computes.
REFERENCE_ARCHITECTURE = {
    "text_projection_gelu": True,
    "attention_output_norms": True,
    "text_key_positions": True,
    "position_codes": "1d",
    "up_block": "basic",
    "head_activation": "none",
    "foreground_pooling": "resize",
    "prototype_range_eps": "add",
    "pixel_normalisation": "per_image",
}


def _paper() -> ModelConfig:
    """The reference code's computation: ConvNeXt-tiny (raw stage outputs) + CXR-BERT at 224,
    with the reference's decoder, head, pooling and normalisation (weights from the hub when
    reachable)."""
    return ModelConfig(
        vision=VisionConfig("hf", "facebook/convnext-tiny-224", True, stage_norms=False),
        text=TextConfig("microsoft/BiomedVLP-CXR-BERT-specialized", True, 24),
        image_size=(224, 224),
        **REFERENCE_ARCHITECTURE,
    )


def _mobilenet_minilm() -> ModelConfig:
    """MobileNetV2 (ImageNet, from PyPI) + all-MiniLM-L6-v2 (from PyPI): works offline."""
    return ModelConfig(vision=VisionConfig("mobilenet_v2", "", True), text=TextConfig(), neck_channels=[32, 64, 128, 256])


MODEL_PRESETS = {"paper": _paper, "mobilenet-minilm": _mobilenet_minilm}
