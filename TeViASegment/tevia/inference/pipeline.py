"""Segment a 2D image or a 3D volume slice by slice with a 2D text-guided model.

Flow per volume: pick display-oriented slices along an anatomical axis (from the direction
matrix), scale intensities to [0, 1] (the scaling remembered per voxel fingerprint), resample
each batch of slices to the model's input size, encode them (or reuse cached features), decode
every prompt, interpolate the probabilities back to the slice size, threshold, and write labels
into a uint8 labelmap with the input's geometry (see ``tevia.volume.labelling``). With
corrective clicks (tevia.volume.clicks), only the slices that carry a click are segmented, each
prompt with its own clicks on that slice, from cached image features when there are some.
Slices stream through in batches, so only the input voxels, the labelmap and one batch live in
memory (plus the bounded :class:`FeatureCache`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk
import torch

from tevia.device import is_out_of_memory
from tevia.inference.domain import DomainCheck
from tevia.prompts import prepare_prompt
from tevia.volume.cache import FeatureCache, fingerprint
from tevia.volume.clicks import RequestClick, locate_clicks, refine_clicked
from tevia.volume.errors import BadInputError
from tevia.volume.geometry import SliceLayout, as_3d, slice_layout
from tevia.inference.transforms import model_input
from tevia.volume.labelling import BatchLabels, count_labels
from tevia.volume.postprocess import postprocess_mask
from tevia.inference.segment_options import SegmentOptions
from tevia.volume.preprocess import PERCENTILES, IntensityScaler, parse_window

if TYPE_CHECKING:  # tevia.inference.segmenter imports transformers: the worker imports it only to load a model
    from tevia.inference.segmenter import Segmenter

__all__ = ["SegmentOptions", "SegmentResult", "Cancelled", "FeatureCache", "image_fingerprint",
           "segment_volume", "volume_slices", "STEP_SECONDS"]

log = logging.getLogger(__name__)

STEP_SECONDS = 0.4
"""Target duration of one model step, so a cancel is seen within about a second."""
_MAX_PROMPTS = 255
class Cancelled(Exception):
    """The caller's ``cancelled()`` returned True; the work stopped and nothing was written."""


@dataclass
class SegmentResult:
    """What :func:`segment_volume` returns.

    Attributes:
        labelmap: uint8 image with exactly the input's size, spacing, origin and direction;
            label i is ``prompts[i - 1]`` (where prompts overlap, the most probable wins).
        labels: Label value -> the prompt as typed.
        voxels: Prompt as typed -> its foreground voxel count in ``labelmap``.
        prompts: ``PreparedPrompt.to_dict()`` per prompt (text encoded, convention, mirrored, warnings).
        warnings: Every warning (input, intensity, prompts, domain), human readable.
        domain: Whether the input looks like the model's training images, per slice and in
            sum (``tevia.inference.domain.DomainCheck.summary``).
        timings: Seconds per stage: read, encode_text, encode_images, decode, postprocess, total;
            plus ``cache_hit`` (1.0 when the image features came from the feature cache).
        refined_slices: With clicks: the indices, along the IJK axis ``refined_axis``, of the
            slices that were segmented; every other slice of ``labelmap`` is 0. None without clicks.
        refined_axis: With clicks: the IJK axis (0 = I, 1 = J, 2 = K) the slices cut; None without.
    """

    labelmap: sitk.Image
    labels: dict[int, str]
    voxels: dict[str, int]
    prompts: list[dict]
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    domain: dict[str, Any] = field(default_factory=dict)
    refined_slices: list[int] | None = None
    refined_axis: int | None = None


class _BatchSizer:
    """Batch sizes that keep a model step near :data:`STEP_SECONDS`, halved on out-of-memory."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.size = min(cap, 2)

    def update(self, count: int, seconds: float) -> None:
        per_slice = max(seconds / max(count, 1), 1e-4)
        self.size = int(min(self.cap, max(1, STEP_SECONDS // per_slice)))

    def halve(self) -> None:
        if self.size <= 1:
            raise torch.OutOfMemoryError("out of memory with a batch of one slice")
        self.cap = self.size = max(1, self.size // 2)


def _prepare_prompts(segmenter: Segmenter, prompts: list[str], options: SegmentOptions,
                     layout: SliceLayout) -> list[Any]:
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise BadInputError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    if len(prompts) > _MAX_PROMPTS:
        raise BadInputError(f"at most {_MAX_PROMPTS} prompts fit one uint8 labelmap, got {len(prompts)}")
    prepared = []
    for index, text in enumerate(prompts):
        if not isinstance(text, str):
            raise BadInputError(f"prompt {index + 1} must be a string, got {text!r}")
        if text in prompts[:index]:
            raise BadInputError(f"prompt {index + 1} repeats an earlier prompt: {text!r}")
        try:
            prepared.append(prepare_prompt(text, segmenter.spec, options.convention,
                                           layout.column_direction_ras))
        except ValueError as error:
            raise BadInputError(f"prompt {index + 1}: {error}") from error
    return prepared


class _Run:
    """State of one :func:`segment_volume` call: the slice loop with cache, cancel and OOM back-off."""

    def __init__(self, segmenter: Segmenter, slices: np.ndarray, labels: np.ndarray, scaler: IntensityScaler,
                 text: torch.Tensor, options: SegmentOptions, domain: DomainCheck,
                 progress: Callable[[str, int, int], None], cancelled: Callable[[], bool]) -> None:
        self.segmenter, self.slices, self.labels, self.domain = segmenter, slices, labels, domain
        self.scaler, self.text, self.options = scaler, text, options
        self.progress, self.cancelled = progress, cancelled
        self.sizer = _BatchSizer(options.batch_size)
        self.timings = {"encode_images": 0.0, "decode": 0.0}
        self.clicks: list[list[list[Any]]] | None = None  # per prompt, per slice: its clicks

    def check(self) -> None:
        """Raise :class:`Cancelled` when the caller asked to stop."""
        if self.cancelled():
            raise Cancelled("cancelled by the caller")

    def encode(self, start: int, stop: int) -> Any:
        """Scale slices [start, stop) (B, rows, columns), resize to the model's (B, H, W), encode."""
        began = time.perf_counter()
        batch = torch.from_numpy(self.scaler(self.slices[start:stop]))
        features = self.segmenter.encode_images(model_input(batch, self.segmenter.spec))
        self.timings["encode_images"] += time.perf_counter() - began
        return features

    def decode(self, features: Any, start: int, stop: int) -> None:
        """Decode every prompt on a batch and write the winning labels into the labelmap (see BatchLabels)."""
        began = time.perf_counter()
        labels = BatchLabels(self.labels[start:stop], self.options.threshold, self.text.shape[0])
        for index in range(self.text.shape[0]):
            self.check()
            clicks = self.clicks[index][start:stop] if self.clicks is not None else []
            text = self.text[index:index + 1]
            probs = (self.segmenter.decode(features, text, clicks) if any(clicks)
                     else self.segmenter.decode(features, text))
            labels.add(index, probs.float().cpu())
        labels.finish()
        self.timings["decode"] += time.perf_counter() - began

    def step(self, start: int, cached: list[Any] | None, offsets: np.ndarray | None) -> tuple[int, Any]:
        """Segment the next batch from ``start``; returns (stop, features computed or None)."""
        while True:
            began = time.perf_counter()
            stop = start
            try:
                if cached is None:
                    stop = min(start + self.sizer.size, len(self.slices))
                    features = self.encode(start, stop)
                    self.check()
                else:
                    index = int(np.searchsorted(offsets, start, side="right")) - 1
                    local = start - int(offsets[index])
                    stop = start + min(self.sizer.size, len(cached[index]) - local)
                    features = cached[index][local:local + stop - start]
                self.domain.add(start, features.maps, self.scaler(self.slices[start:stop]))
                self.decode(features, start, stop)
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                log.warning("out of memory with %d slices per batch: halving", self.sizer.size)
                self.labels[start:stop] = 0  # a failed decode may have written some of its slices
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.sizer.halve()
                continue
            self.sizer.update(stop - start, time.perf_counter() - began)
            return stop, (features if cached is None else None)

    def run(self, cached: list[Any] | None, keep_bytes: int) -> list[Any] | None:
        """Run over all slices.

        Returns:
            The feature chunks computed, for the cache (regrouped into batches of up to
            ``options.batch_size`` slices, see :func:`regroup`); None when they came from
            ``cached`` or outgrew ``keep_bytes`` (then they are dropped as the run goes,
            bounding memory).
        """
        total = len(self.slices)
        offsets = np.cumsum([0] + [len(c) for c in cached]) if cached is not None else None
        chunks: list[Any] | None = None if cached is not None else []
        kept = 0
        done = 0
        self.progress("segment", 0, total)
        while done < total:
            self.check()
            done, features = self.step(done, cached, offsets)
            if chunks is not None:
                kept += int(features.nbytes)
                if kept <= keep_bytes:
                    chunks.append(features)
                else:
                    chunks = None
            self.progress("segment", done, total)
        return None if chunks is None else regroup(chunks, self.options.batch_size)


def regroup(chunks: list[Any], size: int) -> list[Any]:
    """Consecutive feature chunks joined into chunks of at most ``size`` slices (a chunk
    already larger stays as it is).

    A cached run decodes chunk by chunk, so the chunk sizes of the run that filled the cache
    are the batch sizes of every later prompt on the volume. That run's first steps are small
    (the batch grows from 2) and a slow moment shrinks its batches (a step is kept near
    STEP_SECONDS), where a second prompt decodes at full batches: on the 512x512x300 CT a
    second prompt took 0.92 s from chunks of 6 slices against 0.59 s from chunks of 16.
    """
    grouped: list[Any] = []
    pending: list[Any] = []
    count = 0
    for chunk in chunks:
        if pending and count + len(chunk) > size:
            grouped.append(pending[0] if len(pending) == 1 else type(pending[0]).cat(pending))
            pending, count = [], 0
        pending.append(chunk)
        count += len(chunk)
    if pending:
        grouped.append(pending[0] if len(pending) == 1 else type(pending[0]).cat(pending))
    return grouped


def _intensity_scaling(array: np.ndarray, digest: str | None, window: str | tuple[float, float] | None,
                       percentiles: tuple[float, float],
                       feature_cache: FeatureCache | None) -> tuple[IntensityScaler, list[str]]:
    """``IntensityScaler.from_volume``, remembered in the feature cache by voxel fingerprint."""
    key = (digest, parse_window(window), tuple(percentiles))
    remembered = feature_cache.scaling(key) if feature_cache is not None else None
    if remembered is None:
        remembered = IntensityScaler.from_volume(array, window, percentiles)
        if feature_cache is not None:
            feature_cache.put_scaling(key, remembered)
    scaler, warnings = remembered
    return scaler, list(warnings)


def volume_slices(image: sitk.Image, slice_axis: str) -> tuple[sitk.Image, np.ndarray, SliceLayout, tuple[float, float]]:
    """The image as 3D, a (K, J, I) view of its voxels (valid while that 3D image lives), how to
    slice them, and the percentiles to scale them by."""
    volume = as_3d(image)
    array = sitk.GetArrayViewFromImage(volume)
    layout = slice_layout(volume, slice_axis)
    return volume, array, layout, (0.0, 100.0) if len(layout.view(array)) == 1 else PERCENTILES


def image_fingerprint(image: sitk.Image) -> str:
    """The fingerprint :func:`segment_volume` keys its feature cache with (voxels, shape, dtype)."""
    volume = as_3d(image)
    return fingerprint(sitk.GetArrayViewFromImage(volume), torch.get_num_threads())


def segment_volume(segmenter: Segmenter, image: sitk.Image, prompts: list[str],
                   options: SegmentOptions | None = None,
                   progress: Callable[[str, int, int], None] | None = None,
                   cancelled: Callable[[], bool] | None = None,
                   feature_cache: FeatureCache | None = None,
                   voxels_fingerprint: str | None = None,
                   clicks: list[list[RequestClick]] | None = None) -> SegmentResult:
    """Segment an image with one label per prompt.

    Args:
        segmenter: A loaded ``tevia.inference.segmenter.Segmenter``.
        image: 2D or 3D scalar ITK image (LPS frame, e.g. from ``tevia.volume.io.read_input``).
        prompts: Free-text prompts; label i is ``prompts[i - 1]``.
        options: :class:`SegmentOptions` (defaults when None).
        progress: Called as ``progress(stage, done, total)``; stages "segment" (slices) and
            "postprocess" (labels).
        cancelled: Polled between model steps (each about :data:`STEP_SECONDS`); True stops the
            work with :class:`Cancelled`.
        feature_cache: Reuse image features of a volume seen before (same voxels, slice axis,
            intensity scaling and model), and its intensity scaling (same voxels and scaling
            options). Without one, the voxels are not fingerprinted.
        voxels_fingerprint: :func:`image_fingerprint` of ``image`` when the caller already has
            it (e.g. the worker, for an image it read once and never changed); computed when
            None. A wrong value makes the feature cache answer for another volume.
        clicks: Corrective clicks, one list per prompt (tevia.volume.clicks.parse_clicks), for a
            model with click inputs: then only the slices that carry a click are segmented (the
            rest of the labelmap stays 0; ``SegmentResult.refined_slices`` lists them). Lists
            without any click segment as without clicks.

    Returns:
        The :class:`SegmentResult`.

    Raises:
        BadInputError: empty, repeated or too many prompts; an all-NaN volume; clicks for a
            model without click inputs, or outside the image.
        Cancelled: ``cancelled()`` returned True.
        torch.OutOfMemoryError: even one slice per batch does not fit the device.
    """
    began = time.perf_counter()
    options = options or SegmentOptions()
    progress = progress or (lambda stage, done, total: None)
    cancelled = cancelled or (lambda: False)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise BadInputError(f"image must have scalar voxels, got {image.GetNumberOfComponentsPerPixel()} components")
    volume, array, layout, percentiles = volume_slices(image, options.slice_axis)
    prepared = _prepare_prompts(segmenter, prompts, options, layout)
    domain = DomainCheck(segmenter.domain, image, len(layout.view(array)))
    located = None
    if clicks is not None and any(clicks):
        if not segmenter.spec.click_inputs:
            raise BadInputError(f"model {segmenter.spec.name} takes no clicks (it was trained without click "
                                "inputs); send the request without 'clicks', or load a model trained with clicks")
        located = locate_clicks(clicks, volume, image.GetDimension(), layout, tuple(segmenter.spec.image_size))
    digest = None
    if feature_cache is not None:
        digest = voxels_fingerprint or fingerprint(array, torch.get_num_threads())
    scaler, warnings = _intensity_scaling(array, digest, options.window, percentiles, feature_cache)
    warnings += [w for p in prepared for w in p.warnings]
    labels = np.zeros(array.shape, dtype=np.uint8)
    refined = None
    timings = {"read": 0.0, "encode_text": 0.0, "encode_images": 0.0, "decode": 0.0,
               "postprocess": 0.0, "cache_hit": 0.0}
    if not scaler.constant:
        started = time.perf_counter()
        text = segmenter.encode_text([p.text for p in prepared])
        timings["encode_text"] = time.perf_counter() - started
        run = _Run(segmenter, layout.view(array), layout.view(labels), scaler, text, options, domain,
                   progress, cancelled)
        key = (id(segmenter), segmenter.spec.name, segmenter.spec.version,
               digest, layout, scaler.low, scaler.high)
        cached = feature_cache.get(key) if feature_cache is not None else None
        if located is not None:
            refined = refine_clicked(run, located, cached, layout.view(labels))
        else:
            chunks = run.run(cached, feature_cache.max_bytes if feature_cache is not None else 0)
            if feature_cache is not None and chunks is not None:
                feature_cache.put(key, chunks, sum(int(c.nbytes) for c in chunks))
        timings.update(run.timings, cache_hit=float(cached is not None))
    started = time.perf_counter()
    label_values = {index + 1: text for index, text in enumerate(prompts)}
    if options.fill_holes or options.largest_component or options.min_size:
        view = layout.view(labels)
        for value in label_values:
            progress("postprocess", value - 1, len(label_values))
            if cancelled():
                raise Cancelled("cancelled by the caller")
            kept = postprocess_mask(view == value, options.largest_component, options.fill_holes, options.min_size)
            view[(view == value) & ~kept] = 0
            view[kept & (view == 0)] = value
        progress("postprocess", len(label_values), len(label_values))
    timings["postprocess"] = time.perf_counter() - started
    summary = domain.summary()
    if summary["warning"]:
        warnings.append(summary["warning"])
    counts = count_labels(labels, len(prompts))
    labelmap = sitk.GetImageFromArray(labels if image.GetDimension() == 3 else labels[0])
    labelmap.CopyInformation(image)
    timings["total"] = time.perf_counter() - began
    return SegmentResult(
        labelmap=labelmap,
        labels=label_values,
        voxels={text: int(counts[value]) for value, text in label_values.items()},
        prompts=[p.to_dict() for p in prepared],
        warnings=warnings,
        timings=timings,
        domain=summary,
        refined_slices=refined,
        refined_axis=None if refined is None else 2 - layout.axes[0],  # a view's slice index is the KJI array's
    )
