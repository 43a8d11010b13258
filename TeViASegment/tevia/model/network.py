"""TeViANet: vision encoder + three text-guided decoder stages + segmentation head, with the
historic visual prototype. The parts are passed in; `tevia.model.build` composes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.blocks import SubpixelUpsample
from torch import nn

from tevia.model.alignment import FOREGROUND_POOLINGS, foreground_vectors
from tevia.model.clicks import ClickInjection
from tevia.model.decoder import GuidedDecoderStage, StageOptions
from tevia.model.prototype import HistoricPrototype
from tevia.model.vision import VisionEncoder

__all__ = ["TeViANet", "NetworkOutput", "HEAD_ACTIVATIONS", "PIXEL_NORMALISATIONS"]

HEAD_ACTIVATIONS = ("gelu", "none")
PIXEL_NORMALISATIONS = ("mean_std", "per_image")


@dataclass
class NetworkOutput:
    """logits (B, 1, H, W); head_features (B, head_channels, H, W); stage_text: per stage (B, tokens, width)."""

    logits: torch.Tensor
    head_features: torch.Tensor
    stage_text: list[torch.Tensor]


class TeViANet(nn.Module):
    """The TeViA network on precomputed text hidden states.

    Args:
        encoder: yields 4 maps (strides 4..32) with widths `encoder.channels`.
        text_tokens, text_dim: shape (T, D) of the text encoder's output.
        neck_channels: optional widths to project the 4 maps to; empty keeps the encoder's.
        stage_tokens: tokens per decoder stage (3 values).
        in_channels: image channels the network takes (1 is repeated to 3).
        pixel_mean, pixel_std: the encoder's per-channel normalisation (3 values each).
        stage_options: the decoder stages' architecture choices (tevia.model.decoder.StageOptions).
        head_activation: "gelu" or "none" after the subpixel upsampling.
        foreground_pooling: "average" or "resize" (tevia.model.alignment).
        prototype_range_eps: "clamp" or "add" (tevia.model.prototype.HistoricPrototype).
        pixel_normalisation: "mean_std" (pixel_mean / pixel_std) or "per_image" (each image's
            channels to zero mean and unit variance, the reference's NormalizeIntensity).
        click_inputs: take positive and negative click maps in `decode` (tevia.model.clicks),
            injected at each decoder stage's input and the head's; off builds the text-only network.
        click_encoding: how clicks are drawn into those maps: "disc" or "distance".
        click_context: the click injection also reads the decoder's feature map where it adds
            (tevia.model.clicks.ClickInjection `context`).
    """

    def __init__(self, encoder: VisionEncoder, text_tokens: int, text_dim: int, neck_channels: list[int],
                 stage_tokens: list[int], in_channels: int = 1, head_channels: int = 24, self_heads: int = 1,
                 cross_heads: int = 4, momentum: float = 0.99,
                 pixel_mean: list[float] = (0.485, 0.456, 0.406), pixel_std: list[float] = (0.229, 0.224, 0.225),
                 stage_options: StageOptions = StageOptions(), head_activation: str = "gelu",
                 foreground_pooling: str = "average", prototype_range_eps: str = "clamp",
                 pixel_normalisation: str = "mean_std", click_inputs: bool = False,
                 click_encoding: str = "disc", click_context: bool = False) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        for name, value, allowed in (("head_activation", head_activation, HEAD_ACTIVATIONS),
                                     ("foreground_pooling", foreground_pooling, FOREGROUND_POOLINGS),
                                     ("pixel_normalisation", pixel_normalisation, PIXEL_NORMALISATIONS)):
            if value not in allowed:
                raise ValueError(f"model.{name} must be one of {allowed}, got {value!r}")
        self.foreground_pooling = foreground_pooling
        self.pixel_normalisation = pixel_normalisation
        if len(stage_tokens) != 3:
            raise ValueError(f"stage_tokens must have 3 values (one per decoder stage), got {stage_tokens}")
        self.encoder = encoder
        self.in_channels = in_channels
        widths = list(encoder.channels)
        if neck_channels:
            if len(neck_channels) != 4:
                raise ValueError(f"neck_channels must have 4 values, got {neck_channels}")
            self.neck = nn.ModuleList(
                nn.Sequential(nn.Conv2d(c, n, 1, bias=False), nn.BatchNorm2d(n), nn.GELU())
                for c, n in zip(widths, neck_channels)
            )
            widths = list(neck_channels)
        else:
            self.neck = None
        self.widths = widths
        # Stages run from the coarsest map: width[3] -> width[2] -> width[1] -> width[0].
        self.stage_widths = [widths[3], widths[2], widths[1]]
        self.stages = nn.ModuleList(
            GuidedDecoderStage(widths[3 - i], widths[2 - i], text_tokens, text_dim, stage_tokens[i], self_heads,
                               cross_heads, stage_options)
            for i in range(3)
        )
        self.upsample = SubpixelUpsample(2, widths[0], head_channels, scale_factor=4)
        self.head_act = nn.GELU() if head_activation == "gelu" else nn.Identity()
        self.out = nn.Conv2d(head_channels, 1, 1)
        self.prototype = HistoricPrototype(self.stage_widths, momentum, prototype_range_eps)
        self.clicks = (ClickInjection([*self.stage_widths, widths[0]], encoding=click_encoding, context=click_context)
                       if click_inputs else None)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1))

    def encode_image(self, image: torch.Tensor) -> list[torch.Tensor]:
        """image (B, in_channels, H, W) in [0, 1], H and W divisible by 32 -> 4 feature maps."""
        if image.ndim != 4 or image.shape[1] != self.in_channels:
            raise ValueError(f"image must be (B, {self.in_channels}, H, W), got {tuple(image.shape)}")
        if image.shape[-1] % 32 or image.shape[-2] % 32:
            raise ValueError(f"image height and width must be divisible by 32, got {tuple(image.shape[-2:])}")
        image = self.normalise(image)
        if image.device.type == "cpu":
            # oneDNN runs the encoder's convolutions faster on NHWC (channels_last) tensors.
            image = image.contiguous(memory_format=torch.channels_last)
        feats = self.encoder(image)
        if self.neck is not None:
            feats = [n(f) for n, f in zip(self.neck, feats)]
        return feats

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) in [0, 1] -> the encoder's (B, 3, H, W) input."""
        if self.in_channels == 1:
            image = image.expand(-1, 3, -1, -1)
        if self.pixel_normalisation == "mean_std":
            return (image - self.pixel_mean) / self.pixel_std
        std, mean = torch.std_mean(image, dim=(-2, -1), keepdim=True, correction=0)
        return (image - mean) / torch.where(std == 0, torch.ones_like(std), std)

    def decode(self, feats: list[torch.Tensor], text: torch.Tensor,
               clicks: torch.Tensor | None = None) -> NetworkOutput:
        """feats from encode_image; text (B, T, D) or (1, T, D) broadcast over the batch; clicks
        None or click maps (B, 2, H, W) at the input resolution (`self.clicks.render`),
        only for a network built with click inputs."""
        if text.shape[0] == 1 and feats[0].shape[0] > 1:
            text = text.expand(feats[0].shape[0], -1, -1)
        if clicks is not None:
            self._check_clicks(clicks, feats[0].shape[0])
        x = feats[3]
        stage_text = []
        for i, stage in enumerate(self.stages):
            if clicks is not None:
                x = x + self.clicks(clicks, i, x)
            x, t = stage(x, feats[2 - i], text, self.prototype.modulation(i))
            stage_text.append(t)
        if clicks is not None:
            x = x + self.clicks(clicks, 3, x)
        head = self.head_act(self._upsample(x))
        return NetworkOutput(self.out(head), head, stage_text)

    def _check_clicks(self, clicks: torch.Tensor, batch: int) -> None:
        if self.clicks is None:
            raise ValueError("this model was trained without click inputs (model.click_inputs false); "
                             "segment with text only, or use a model trained with clicks")
        if clicks.ndim != 4 or clicks.shape[:2] != (batch, 2):
            raise ValueError(f"click maps must be ({batch}, 2, H, W), got {tuple(clicks.shape)}")

    def _upsample(self, x: torch.Tensor) -> torch.Tensor:
        """`self.upsample(x)`, computed faster: torch's pixel_shuffle (the same permutation as
        MONAI's) keeps a channels_last input channels_last, and MONAI's pad + 4x4 average pool
        runs as the equivalent depthwise convolution with a constant 1/16 kernel (same sums;
        about 3x faster on CPU than avg_pool2d at full resolution)."""
        up = self.upsample
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        y = F.pixel_shuffle(up.conv_block(x), up.scale_factor)
        _, pool = up.pad_pool  # ConstantPad2d((k - 1, 0, k - 1, 0)) then AvgPool2d(k, stride 1)
        k = pool.kernel_size
        box = torch.full((y.shape[1], 1, k, k), 1.0 / (k * k), dtype=y.dtype, device=y.device)
        # Zero padding k - 1 on every side, keeping the top-left H x W outputs, is the same
        # one-sided padding without a padded copy of the full-resolution map.
        h, w = y.shape[-2:]
        return F.conv2d(y, box, padding=k - 1, groups=y.shape[1])[..., :h, :w]

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> NetworkOutput:
        return self.decode(self.encode_image(image), text)

    def foreground(self, output: NetworkOutput, mask: torch.Tensor) -> list[torch.Tensor]:
        """Per-stage foreground representations (B, width_i) of a batch with its ground truth."""
        return foreground_vectors(output.head_features, mask, self.stage_widths, self.foreground_pooling)
