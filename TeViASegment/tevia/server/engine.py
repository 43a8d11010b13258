"""The server's view of the engine: one Segmenter, one feature cache, the volume pipeline."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import SimpleITK as sitk

from tevia import __version__
from tevia.pipeline import FeatureCache, SegmentOptions, SegmentResult, segment_volume

__all__ = ["SegmentationService", "API_VERSION"]

logger = logging.getLogger(__name__)

API_VERSION = 1


class SegmentationService:
    """Runs `tevia.pipeline.segment_volume` on one loaded model with a shared feature cache.

    Only the inference queue's worker thread calls `run`, so the model runs one request at a
    time, as in the worker process.

    Args:
        segmenter: a loaded `tevia.inference.Segmenter`.
        feature_cache_bytes: memory for cached per-volume image features.
    """

    def __init__(self, segmenter: Any, feature_cache_bytes: int) -> None:
        self.segmenter = segmenter
        self.feature_cache = FeatureCache(feature_cache_bytes)

    def info(self) -> dict[str, Any]:
        """Name, versions, device, precision, side convention and example prompts of the served model."""
        spec = self.segmenter.spec
        return {
            "name": "tevia",
            "version": __version__,
            "api": API_VERSION,
            "model": spec.name,
            "model_version": spec.version,
            "modality": spec.modality,
            "device": str(self.segmenter.device),
            "precision": getattr(self.segmenter, "precision", "fp32"),
            "side_convention": spec.side_convention,
            "example_prompts": list(spec.example_prompts),
        }

    @staticmethod
    def parse_options(options: dict[str, Any]) -> SegmentOptions:
        """Validate request options (ValueError naming the bad key and value)."""
        return SegmentOptions.from_dict(options)

    def run(self, image: sitk.Image, prompts: list[str], options: SegmentOptions,
            cancelled: Callable[[], bool]) -> SegmentResult:
        """Segment `image` (LPS, as read by ITK) for each prompt; raises pipeline.Cancelled."""
        return segment_volume(self.segmenter, image, prompts, options, cancelled=cancelled,
                              feature_cache=self.feature_cache)
