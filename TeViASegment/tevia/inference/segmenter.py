"""Inference facade: encode an image once, decode it for any number of prompts.

`Segmenter.load(model, device)` reads a model folder (see tevia.checkpoint) and its frozen
text encoder. `encode_images` runs the vision encoder and returns `ImageFeatures` that a
caller may cache; `decode` runs the text-guided decoder for one prompt, cheap by comparison,
optionally with corrective clicks (models with click inputs: `spec.click_inputs`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tevia.checkpoint import CheckpointError, load_network_weights, read_model_json
from tevia.inference.text_cache import TextEmbeddingCache
from tevia.device import PRECISIONS, check_precision, select_device
from tevia.inference.domain import DomainProfile
from tevia.model.build import build_network, build_text_encoder
from tevia.model.clicks import Click, validate_clicks
from tevia.model.text import weight_files_sha256
from tevia.inference.spec import ModelSpec
from tevia.model_folders import resolve_model

__all__ = ["ImageFeatures", "Segmenter"]

log = logging.getLogger(__name__)


def _cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); True when torch cannot tell."""
    cpu = torch.cpu
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    checks = [check for check in checks if check is not None]
    return not checks or any(check() for check in checks)


@dataclass
class ImageFeatures:
    """The vision encoder's 4 maps for a batch, each (B, C_i, H_i, W_i); for a model with
    `test_time_vertical_flip`, also those of the images flipped up-down (`mirrored`)."""

    maps: list[torch.Tensor]
    mirrored: list[torch.Tensor] | None = None

    def _each(self, change) -> "ImageFeatures":
        return ImageFeatures([change(m) for m in self.maps],
                             None if self.mirrored is None else [change(m) for m in self.mirrored])

    def __len__(self) -> int:
        return self.maps[0].shape[0]

    def __getitem__(self, index: slice) -> "ImageFeatures":
        if not isinstance(index, slice):
            index = slice(index, index + 1)
        return self._each(lambda m: m[index])

    @property
    def nbytes(self) -> int:
        return sum(m.element_size() * m.nelement() for m in self.maps + (self.mirrored or []))

    def to(self, device: torch.device | str) -> "ImageFeatures":
        return self._each(lambda m: m.to(device))

    @staticmethod
    def cat(parts: list["ImageFeatures"]) -> "ImageFeatures":
        mirrored = None if parts[0].mirrored is None else [torch.cat(ms) for ms in zip(*(p.mirrored for p in parts))]
        return ImageFeatures([torch.cat(ms) for ms in zip(*(p.maps for p in parts))], mirrored)


class Segmenter:
    """A loaded TeViA model ready for inference (one call at a time)."""

    def __init__(self, network, text_encoder, spec: ModelSpec, device: torch.device, folder: Path | None = None,
                 precision: str = "fp32", domain: DomainProfile | None = None) -> None:
        check_precision(precision, device)
        if precision == "bf16" and device.type == "cpu" and not _cpu_has_bf16():
            log.warning("precision bf16 on a CPU without AVX512-BF16 or AMX: bfloat16 is emulated there and "
                        "likely slower than fp32")
        self.precision = precision
        self.network = network.to(device).eval()
        self.text_encoder = text_encoder.to(device)
        self.spec = spec
        self.device = device
        self.folder = folder
        self.domain = domain
        self.text_cache = TextEmbeddingCache(self.text_encoder, max_items=4096)

    @classmethod
    def load(cls, model: str | Path = "default", device: str = "auto", precision: str = "fp32",
             check_domain: bool = True) -> "Segmenter":
        """Loads a model folder or bundled model name onto a device (auto|cpu|cuda|mps), to run
        at a precision (fp32|bf16); with check_domain, its domain profile too (tevia.inference.domain)."""
        dev = select_device(device)
        check_precision(precision, dev)  # before the model loads
        folder = resolve_model(model)
        config, info = read_model_json(folder)
        text_encoder = build_text_encoder(config)
        recorded = info.get("text_encoder", {}).get("sha256") or {}
        actual = weight_files_sha256(text_encoder.folder)
        if recorded and actual and recorded != actual:
            raise CheckpointError(
                f"the text encoder at {text_encoder.folder} is not the one this model was trained with "
                f"(sha256 differs for {sorted(k for k in recorded if recorded.get(k) != actual.get(k))}); "
                f"install the encoder named in {folder / 'model.json'}")
        network = build_network(config, text_encoder.hidden_size, pretrained_vision=False)
        load_network_weights(network, folder, info)
        domain = DomainProfile.load(folder, info, sum(network.widths)) if check_domain else None
        if domain is None and check_domain:
            log.warning("model %s carries no description of its training images: inputs unlike them cannot be "
                        "detected (add one with tevia domain)", folder)
        spec = ModelSpec(
            name=info.get("name", folder.name),
            version=str(info.get("version", "")),
            image_size=tuple(config.image_size),
            in_channels=config.in_channels,
            modality=info.get("modality", ""),
            side_convention=info.get("side_convention", "image"),
            vocabulary=list(info.get("vocabulary", [])),
            example_prompts=list(info.get("example_prompts", [])),
            threshold=float(info.get("threshold", 0.5)),
            click_inputs=config.click_inputs,
            test_time_vertical_flip=bool(info.get("test_time_vertical_flip", False)),
        )
        log.info("model %s loaded from %s on %s", spec.name, folder, dev)
        return cls(network, text_encoder, spec, dev, folder, precision, domain)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """(P, T, D) text hidden states, cached per string."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        return self.text_cache.get(list(prompts)).to(self.device)

    def _as_batch(self, images) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images, dtype=torch.float32)
        if x.ndim == 2:
            x = x[None]
        h, w = self.spec.image_size
        if self.spec.in_channels == 1:
            if x.ndim != 3 or tuple(x.shape[-2:]) != (h, w):
                raise ValueError(f"images must be (B, {h}, {w}) floats in [0, 1], got shape {tuple(x.shape)}")
            x = x[:, None]
        elif x.ndim != 4 or tuple(x.shape[1:]) != (3, h, w):
            raise ValueError(f"images must be (B, 3, {h}, {w}) floats in [0, 1], got shape {tuple(x.shape)}")
        return x.to(self.device)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    @torch.inference_mode()
    def encode_images(self, images) -> ImageFeatures:
        """images (B, H, W) float32 in [0, 1] at spec.image_size -> ImageFeatures on the device
        (bfloat16 maps, half the memory, at precision bf16); with spec.test_time_vertical_flip,
        the images flipped up-down are encoded too (twice the cost and memory)."""
        x = self._as_batch(images)
        with self._autocast():
            mirrored = self.network.encode_image(x.flip(-2)) if self.spec.test_time_vertical_flip else None
            return ImageFeatures(self.network.encode_image(x), mirrored)

    def click_maps(self, clicks: list[list[Click]]) -> torch.Tensor:
        """Click maps (B, 2, H, W) on the device for per-image clicks at the model's input size;
        ValueError for a model without click inputs or a click outside the image."""
        if not self.spec.click_inputs:
            raise ValueError(f"model {self.spec.name} takes no clicks (it was trained without click inputs); "
                             "segment with text only, or load a model trained with clicks")
        for b, sample in enumerate(clicks):
            validate_clicks(sample, self.spec.image_size, f"clicks of image {b}")
        return self.network.clicks.render(clicks, self.spec.image_size, self.device)

    @torch.inference_mode()
    def decode(self, features: ImageFeatures, text: torch.Tensor,
               clicks: list[list[Click]] | None = None) -> torch.Tensor:
        """(B, H, W) float32 probabilities on the CPU for one prompt's text (1, T, D) or (B, T, D);
        `clicks`: None (text only) or one list of clicks per image (pixels at spec.image_size).
        Features with `mirrored` maps (test_time_vertical_flip) give the mean of the image's
        probabilities and those of its up-down mirror, flipped back."""
        feats = features.to(self.device)
        if clicks is not None and len(clicks) != len(feats):
            raise ValueError(f"clicks must hold one list per image ({len(feats)}), got {len(clicks)}")
        maps = self.click_maps(clicks) if clicks is not None else None
        text = text.to(self.device)
        with self._autocast():
            probs = torch.sigmoid(self.network.decode(feats.maps, text, maps).logits[:, 0].float())
            if feats.mirrored is not None:
                mirrored = self.network.decode(feats.mirrored, text, None if maps is None else maps.flip(-2))
                probs = (probs + torch.sigmoid(mirrored.logits[:, 0].float()).flip(-2)) / 2
        return probs.cpu()

    def predict(self, images, prompt: str) -> np.ndarray:
        """(B, H, W) probabilities for one prompt (encode_images + decode)."""
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        return self.decode(self.encode_images(images), self.encode_text([prompt])).numpy()
