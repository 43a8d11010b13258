"""One inference session behind every front end: the worker, ``tevia predict`` and the server.

An :class:`InferenceSession` holds the loaded :class:`~tevia.inference.segmenter.Segmenter`, the
image-feature cache, the last input it read (reused by the next request on the same input),
the fallback from a device out-of-memory to the CPU, and the writing of labelmaps with their
sidecars; :func:`describe_model` is how every front end describes the model. The session knows
no protocol: it reports progress and warnings through callbacks and raises its own errors
(:class:`ModelLoadError`, ``MemoryError``, ``tevia.inference.pipeline.Cancelled``, the pipeline's
input errors); each front end turns them into worker events, HTTP answers or exit codes.
One call at a time: each front end runs its requests one after another.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import SimpleITK as sitk
import torch

from tevia.device import check_precision, describe_device, is_out_of_memory
from tevia.model_folders import DEFAULT_MODEL
from tevia.inference.segment_options import SegmentOptions
from tevia.volume.cache import FeatureCache
from tevia.volume.clicks import RequestClick
from tevia.volume.io import input_signature, read_input
from tevia.inference.pipeline import Cancelled, SegmentResult, image_fingerprint, segment_volume
from tevia.volume.writers import check_output_path, labelmap_block, write_labelmap

if TYPE_CHECKING:  # tevia.inference.segmenter imports transformers: imported only when a model loads
    from tevia.inference.segmenter import Segmenter

__all__ = ["InferenceSession", "ModelLoadError", "SegmentedFile", "describe_model", "input_paths"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``; stages "read", "segment", "postprocess", "write"."""
Warn = Callable[[str], None]
"""Called with each warning as it arises."""


class ModelLoadError(Exception):
    """A model that cannot be loaded.

    Attributes:
        missing: True when the name or folder names no usable model (unknown name, missing
            folder or file); False when the model was found but failed to load.
    """

    def __init__(self, message: str, missing: bool) -> None:
        super().__init__(message)
        self.missing = missing


def describe_model(segmenter: Segmenter) -> dict[str, Any]:
    """What every front end tells about a loaded model (JSON-ready).

    Returns:
        name, version, modality, device, device_name, precision, image_size [H, W],
        side_convention, vocabulary, example_prompts, click_inputs, and domain: what the
        model's training images are (description, dimensionality, dicom_modalities), or None
        for a model without a domain profile (tevia.inference.domain).
    """
    spec, profile = segmenter.spec, segmenter.domain
    return {"name": spec.name, "version": spec.version, "modality": spec.modality,
            "device": str(segmenter.device), "device_name": describe_device(segmenter.device),
            "precision": segmenter.precision, "image_size": list(spec.image_size),
            "side_convention": spec.side_convention, "vocabulary": list(spec.vocabulary),
            "example_prompts": list(spec.example_prompts), "click_inputs": spec.click_inputs,
            "domain": None if profile is None else {"description": profile.description,
                                                    "dimensionality": profile.dimensionality,
                                                    "dicom_modalities": list(profile.dicom_modalities)}}


def input_paths(source: str | Path | dict[str, str]) -> tuple[str, ...]:
    """The files of an input: an image file or DICOM folder, or raw voxels ``{"npy", "geometry"}``."""
    return tuple(source.values()) if isinstance(source, dict) else (str(source),)


@dataclass
class _KeptInput:
    """The last input read: what identifies it (its files' signature, or the client's input key
    and the input), the image, its warnings, and its voxel fingerprint."""

    identity: tuple
    image: sitk.Image
    warnings: list[str]
    fingerprint: str


@dataclass
class SegmentedFile:
    """What :meth:`InferenceSession.segment_file` did.

    Attributes:
        output: The labelmap written (its sidecar beside it).
        result: The pipeline's result; its timings include "read" and "write".
        warnings: Every warning: the input's, then the run's.
        input_reused: The image was the one kept from the previous request (not read again).
        crop_origin: Where the written block starts (K, J, I) when the labelmap was cropped.
    """

    output: Path
    result: SegmentResult
    warnings: list[str] = field(default_factory=list)
    input_reused: bool = False
    crop_origin: list[int] | None = None


def _ignore(*_: Any) -> None:
    """The default progress and warning callback."""


class InferenceSession:
    """The loaded model and what is kept between requests (see the module docstring).

    Args:
        cache_bytes: Bound of the image-feature cache.
        segmenter: A model loaded already (e.g. by ``tevia serve``), or None: :meth:`load`, or
            the first segmentation, loads one.
        model: The name ``segmenter`` was loaded under (default: its folder); a fallback to
            the CPU loads this name again.
    """

    def __init__(self, cache_bytes: int = 2 * 1024**3, segmenter: Segmenter | None = None,
                 model: str | None = None) -> None:
        self.cache = FeatureCache(cache_bytes)
        self.segmenter = segmenter
        self.model = model or (str(segmenter.folder) if segmenter is not None and segmenter.folder else None)
        self._kept: _KeptInput | None = None

    def load(self, model: str = DEFAULT_MODEL, device: str = "auto", precision: str = "fp32") -> dict[str, Any]:
        """Load a model (tevia.model_folders names) onto a device; empties the feature cache.

        Returns:
            :func:`describe_model` of it, with ``load_seconds``.

        Raises:
            ValueError: a device that is not there, or a precision it cannot run.
            ModelLoadError: the model cannot be found or loaded; the loaded one stays.
        """
        from tevia.checkpoint import CheckpointError
        from tevia.device import select_device
        from tevia.inference.segmenter import Segmenter

        resolved = select_device(device)
        check_precision(precision, resolved)
        began = time.perf_counter()
        try:
            segmenter = Segmenter.load(model, device=str(resolved), precision=precision)
        except (FileNotFoundError, ValueError) as error:
            raise ModelLoadError(f"cannot load model {model!r}: {error}", missing=True) from error
        except (CheckpointError, OSError) as error:  # explained by its message: the traceback only for debugging
            log.debug("loading %s failed", model, exc_info=True)
            raise ModelLoadError(f"cannot load model {model!r}: {error}", missing=False) from error
        except Exception as error:  # unexplained: a bug, or a library failing; keep where it came from
            log.error("loading %s failed:\n%s", model, traceback.format_exc())
            raise ModelLoadError(f"cannot load model {model!r}: {type(error).__name__}: {error}",
                                 missing=False) from error
        self.segmenter, self.model = segmenter, model
        self.cache.clear()
        return {**describe_model(segmenter), "load_seconds": round(time.perf_counter() - began, 3)}

    def ensure_loaded(self, model: str | None = None, device: str = "auto") -> None:
        """Load ``model`` unless it is the one loaded; with no model given, the loaded one, or
        the default model when none is. Raises as :meth:`load`."""
        if self.segmenter is None or model is not None and model != self.model:
            self.load(model or self.model or DEFAULT_MODEL, device)

    def read(self, source: str | Path | dict[str, str], key: str | None = None) -> tuple[sitk.Image, list[str], bool]:
        """``read_input``, reusing the previous request's image when it read the same input.

        The same input is, without ``key``, the same unchanged files (see
        ``tevia.volume.io.input_signature``); with ``key``, the same ``source`` under the same
        key: the client's promise that the content is what it was (PROTOCOL.md, ``input_key``),
        so the files are not even looked at. One image is kept, with its voxel fingerprint for
        the feature cache; it is dropped before a different input is read, so two volumes never
        sit in memory.

        Returns:
            (image, warnings, reused)
        """
        identity = ("input_key", key, json.dumps(source, sort_keys=True, default=str)) if key is not None \
            else input_signature(source)
        if identity is not None and self._kept is not None and self._kept.identity == identity:
            return self._kept.image, list(self._kept.warnings), True
        self._kept = None
        image, warnings = read_input(source)
        if identity is not None and (key is not None or input_signature(source) == identity):  # not changed while read
            # the session never changes the kept image: hash its voxels once, not once per prompt
            self._kept = _KeptInput(identity, image, list(warnings), image_fingerprint(image))
        return image, warnings, False

    def segment(self, image: sitk.Image, prompts: list[str], options: SegmentOptions | None = None,
                progress: Progress = _ignore, cancelled: Callable[[], bool] | None = None, warn: Warn = _ignore,
                clicks: list[list[RequestClick]] | None = None) -> SegmentResult:
        """``tevia.inference.pipeline.segment_volume`` with the session's model and feature cache.

        On a device out-of-memory that even one slice per batch meets, the model is loaded
        again on the CPU (``warn`` says so) and the image segmented there; the session stays
        on the CPU.

        Raises:
            MemoryError: out of memory on the CPU.
            ModelLoadError: no model was loaded and the default cannot load.
            Cancelled, BadInputError: as ``segment_volume``.
        """
        self.ensure_loaded()
        digest = self._kept.fingerprint if self._kept is not None and self._kept.image is image else None
        try:
            return segment_volume(self.segmenter, image, prompts, options, progress, cancelled, self.cache, digest,
                                  clicks)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            if self.segmenter.device.type == "cpu":
                raise MemoryError(str(error)) from error
            warn(f"out of memory on {self.segmenter.device} even with one slice per batch: falling back to the "
                 "CPU (slower)")
        self.load(self.model or DEFAULT_MODEL, "cpu", self.segmenter.precision)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return segment_volume(self.segmenter, image, prompts, options, progress, cancelled, self.cache, digest,
                              clicks)

    def segment_file(self, source: str | Path | dict[str, str], prompts: list[str], output: str | Path,
                     options: SegmentOptions, input_key: str | None = None, progress: Progress = _ignore,
                     cancelled: Callable[[], bool] | None = None, warn: Warn = _ignore,
                     clicks: list[list[RequestClick]] | None = None,
                     sidecar: dict[str, Any] | None = None, crop: bool = False) -> SegmentedFile:
        """Read an input (:meth:`read`), segment it (:meth:`segment`) and write its labelmap.

        The output is written atomically with its JSON sidecar (tevia.volume.writers), which
        holds the model's name, ``sidecar``'s entries, the convention, prompts, voxel counts,
        options, warnings and the domain summary. ``warn`` gets the input's warnings after the
        read and the run's before the write. ``crop`` (a .npy output only) writes just the
        block that holds the labelled voxels (tevia.volume.writers.write_labelmap).

        Raises:
            FileNotFoundError, tevia.volume.errors.InputError: the input cannot be read, or the
                output cannot be written there (checked before the model runs).
            Cancelled: ``cancelled()`` turned True; nothing was written.
            MemoryError, ModelLoadError: as :meth:`segment`.
        """
        cancelled = cancelled or (lambda: False)
        began = time.perf_counter()
        progress("read", 0, 1)
        image, warnings, reused = self.read(source, input_key)
        output = check_output_path(output, image, inputs=input_paths(source))
        read_seconds = time.perf_counter() - began
        for message in warnings:
            warn(message)
        result = self.segment(image, prompts, options, progress, cancelled, warn, clicks)
        if cancelled():
            raise Cancelled("cancelled before writing")
        for message in result.warnings:
            warn(message)
        warnings += result.warnings
        progress("write", 0, 1)
        began = time.perf_counter()
        block = labelmap_block(result.labelmap) if crop else None
        write_labelmap(result.labelmap, output, result.labels, {
            "model": self.model, **(sidecar or {}), "convention": options.convention, "prompts": result.prompts,
            "voxels": result.voxels, "options": options.to_dict(), "warnings": warnings, "domain": result.domain},
            crop=block, source=None if isinstance(source, dict) else source)
        result.timings.update(read=read_seconds, write=time.perf_counter() - began)
        result.timings["total"] += read_seconds + result.timings["write"]
        return SegmentedFile(output, result, warnings, reused, [start for start, _ in block] if block else None)
