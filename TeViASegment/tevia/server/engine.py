"""The server's view of the engine: one Segmenter, one feature cache, the volume pipeline."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from tevia import __version__
from tevia.volume.pipeline import FeatureCache, SegmentOptions, segment_volume
from tevia.server.tempfiles import RequestFolder
from tevia.server.volume_io import UploadedVolume, encode_labelmap, read_uploaded_volume

__all__ = ["SegmentationService", "API_VERSION"]

logger = logging.getLogger(__name__)

API_VERSION = 2
"""Version of the HTTP API; 2: the answer is one JSON body holding the label map and the labelmap."""


class SegmentationService:
    """Runs `tevia.volume.pipeline.segment_volume` on one loaded model with a shared feature cache.

    Only the inference queue's worker thread calls `segment`, so the model runs one request
    at a time, as in the worker process, and only one decoded volume is held at a time.

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

    def segment(self, volume: UploadedVolume, prompts: list[str], options: SegmentOptions, folder: RequestFolder,
                cancelled: Callable[[], bool]) -> tuple[dict[str, Any], bytes]:
        """Decode an inspected upload, segment it for each prompt and encode the labelmap.

        The decoded volume and the labelmap image live only inside this call.

        Returns:
            (summary: labels, prompts, warnings, domain, voxels, timings; the labelmap as .nii.gz bytes).

        Raises:
            ValueError: the voxels cannot be read or segmented (message without server paths).
            VolumeTooLargeError: the volume does not fit the memory available now.
            tevia.volume.pipeline.Cancelled: `cancelled()` turned True.
        """
        began = time.perf_counter()
        image, warnings = read_uploaded_volume(volume, folder)
        read_seconds = time.perf_counter() - began
        result = segment_volume(self.segmenter, image, prompts, options, cancelled=cancelled,
                                feature_cache=self.feature_cache)
        del image
        labelmap = encode_labelmap(result.labelmap, folder)
        timings = {**result.timings, "read": read_seconds}
        summary = {
            "labels": {str(label): prompt for label, prompt in result.labels.items()},
            "prompts": result.prompts,
            "warnings": warnings + result.warnings,
            "domain": result.domain,
            "voxels": result.voxels,
            "timings": {name: round(float(value), 4) for name, value in timings.items()},
        }
        return summary, labelmap
