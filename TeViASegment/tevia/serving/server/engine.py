"""The server's view of the engine: an inference session (tevia.inference.session) behind the HTTP API."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tevia import __version__
from tevia.inference.segment_options import SegmentOptions
from tevia.serving.server.tempfiles import RequestFolder
from tevia.serving.server.volume_io import UploadedVolume, encode_labelmap, read_uploaded_volume
from tevia.inference.session import InferenceSession, describe_model
from tevia.volume.clicks import RequestClick

if TYPE_CHECKING:
    from tevia.inference.segmenter import Segmenter

__all__ = ["SegmentationService", "API_VERSION"]

API_VERSION = 2
"""Version of the HTTP API; 2: the answer is one JSON body holding the label map and the labelmap."""


class SegmentationService:
    """Segments uploads with an :class:`~tevia.inference.session.InferenceSession` on one loaded model.

    Only the inference queue's worker thread calls `segment`, so the model runs one request
    at a time, as in the worker process, and only one decoded volume is held at a time. A
    device out-of-memory falls back to the CPU as in the worker (the answer's warnings say so).

    Args:
        segmenter: a loaded `tevia.inference.segmenter.Segmenter`.
        feature_cache_bytes: memory for cached per-volume image features.
    """

    def __init__(self, segmenter: Segmenter, feature_cache_bytes: int) -> None:
        self.session = InferenceSession(feature_cache_bytes, segmenter)

    def info(self) -> dict[str, Any]:
        """The server's name, version and API, and the served model (tevia.inference.session.describe_model:
        `model` is its name, `model_version` its version)."""
        model = describe_model(self.session.segmenter)
        return {"name": "tevia", "version": __version__, "api": API_VERSION, "model": model.pop("name"),
                "model_version": model.pop("version"), **model}

    def segment(self, volume: UploadedVolume, prompts: list[str], options: SegmentOptions, folder: RequestFolder,
                cancelled: Callable[[], bool], clicks: list[list[RequestClick]] | None = None
                ) -> tuple[dict[str, Any], bytes]:
        """Decode an inspected upload, segment it for each prompt and encode the labelmap.

        The decoded volume and the labelmap image live only inside this call. With `clicks`
        (tevia.volume.clicks), only the clicked slices are segmented, from the cached image
        features of the volume when it was segmented before (see `segment_volume`).

        Returns:
            (summary: labels, prompts, warnings, domain, voxels, timings, and with clicks
            refined_slices and refined_axis; the labelmap as .nii.gz bytes).

        Raises:
            ValueError: the voxels cannot be read or segmented, or clicks cannot be placed
                (message without server paths).
            VolumeTooLargeError: the volume does not fit the memory available now.
            MemoryError: out of memory even on the CPU.
            tevia.inference.pipeline.Cancelled: `cancelled()` turned True.
        """
        began = time.perf_counter()
        image, warnings = read_uploaded_volume(volume, folder)
        read_seconds = time.perf_counter() - began
        result = self.session.segment(image, prompts, options, cancelled=cancelled, warn=warnings.append,
                                     clicks=clicks)
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
        if result.refined_slices is not None:
            summary.update(refined_slices=result.refined_slices, refined_axis=result.refined_axis)
        return summary, labelmap
