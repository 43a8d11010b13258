"""Is an input like the model's training images? A check that costs nothing extra at inference.

A model folder may carry a domain profile (``domain.safetensors``, described under "domain"
in model.json): what the model was trained on (a description such as "2D frontal chest
X-rays", the dimensionality "2d" or "slices", the DICOM modalities of its training images)
and the statistics of its image features over the training images: the mean and a whitening
matrix (inverse square root of a shrunk covariance) of the globally average-pooled feature
maps the vision encoder computes anyway for the decoder. The score of a slice is the RMS of
its whitened features (a Mahalanobis distance divided by sqrt(D): about 1 for training
images); a slice scoring above the threshold, calibrated on the validation split to at most
1% false alarms, "looks unlike" the training images.

A second, per-slice test looks at intensities: the mean and the spread (standard deviation) of
each slice as the model's input scaling gives them (0..1), against the range the training
slices span, widened by :data:`INTENSITY_MARGIN` of its width on each side. Scans of another
acquisition can have features close enough to the training images' to pass the feature test
(which is calibrated on val, and a val split may hold such scans) while their intensities lie
outside every training slice's: the Radiopaedia-style CT slices of covid-ct-slices are brighter
and noisier than all of its training slices (docs/models/ct-lung-infection.md).

Metadata counts too: a 3D volume given to a 2D model, a DICOM Modality the model was not
trained on. Nothing is refused: the pipeline segments as usual and adds a warning (starting
with :data:`WARNING_PREFIX`, which the Slicer module recognises) and a ``domain`` summary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from safetensors.torch import save_file

from tevia.checkpoint import CheckpointError, load_checked_tensors, update_model_json
from tevia.files import atomic_path, sha256_file
from tevia.volume.io import DICOM_MODALITY

__all__ = ["DOMAIN_FILE", "WARNING_PREFIX", "DIMENSIONALITIES", "INTENSITY_MARGIN", "DomainProfile", "DomainCheck",
           "pooled_features", "intensity_statistics", "intensity_ranges", "slice_ranges"]

log = logging.getLogger(__name__)

DOMAIN_FILE = "domain.safetensors"
WARNING_PREFIX = "Unlike the training images: "
"""Every domain warning starts with this (the Slicer module shows those as a notice)."""
DIMENSIONALITIES = ("2d", "slices")
"""2d: trained on single 2D images (a 3D volume is unlike them); slices: on slices of volumes."""
_SHRINKAGE = 0.05
INTENSITY_MARGIN = 0.05
"""The intensity test's range: the training slices' range widened by this share of its width on each side."""
_INTENSITY_NAMES = ("mean", "std")


def pooled_features(maps: list[torch.Tensor]) -> torch.Tensor:
    """(B, D) float32 on the CPU: each map (B, C_i, H_i, W_i) averaged over space, concatenated."""
    return torch.cat([m.float().mean(dim=(2, 3)) for m in maps], dim=1).cpu()


def intensity_statistics(slices: np.ndarray | torch.Tensor) -> np.ndarray:
    """(B, 2) float64: the mean and the standard deviation of each slice's intensities.

    Args:
        slices: (B, ...) slices scaled as the model's input is before resizing (0..1).
    """
    values = torch.as_tensor(slices).reshape(len(slices), -1).double()
    return torch.stack([values.mean(1), values.std(1, correction=0)], dim=1).numpy()


def intensity_ranges(statistics: np.ndarray) -> dict[str, list[float]]:
    """The intensity test's ranges from the training slices' `intensity_statistics` (K, 2): each
    statistic's range widened by :data:`INTENSITY_MARGIN` of its width on each side."""
    statistics = np.asarray(statistics, dtype=np.float64)
    low, high = statistics.min(axis=0), statistics.max(axis=0)
    margin = INTENSITY_MARGIN * (high - low)
    return {name: [round(float(low[i] - margin[i]), 6), round(float(high[i] + margin[i]), 6)]
            for i, name in enumerate(_INTENSITY_NAMES)}


@dataclass
class DomainProfile:
    """What a model was trained on and the statistics of its pooled image features.

    Attributes:
        description: What the training images are, e.g. "2D frontal chest X-rays".
        dimensionality: One of :data:`DIMENSIONALITIES`.
        dicom_modalities: DICOM Modality codes of the training images (e.g. ["CR", "DX"]);
            empty when unknown (then the modality is not checked).
        mean: (D,) mean pooled features of the training images.
        whitening: (D, D) inverse square root of their shrunk covariance.
        threshold: Score above which a slice looks unlike the training images.
        calibration: How it was computed (data, counts, false-alarm rate on val, ...).
        intensity: The intensity test's ranges, {"mean": [low, high], "std": [low, high]}
            (see :data:`INTENSITY_MARGIN`); None: no intensity test (profiles written before it).
    """

    description: str
    dimensionality: str
    dicom_modalities: list[str]
    mean: torch.Tensor
    whitening: torch.Tensor
    threshold: float
    calibration: dict[str, Any] = field(default_factory=dict)
    intensity: dict[str, list[float]] | None = None

    def __post_init__(self) -> None:
        if self.dimensionality not in DIMENSIONALITIES:
            raise ValueError(f"dimensionality must be one of {', '.join(DIMENSIONALITIES)}, got {self.dimensionality!r}")
        dim = self.mean.shape[0]
        if self.mean.ndim != 1 or tuple(self.whitening.shape) != (dim, dim):
            raise ValueError(f"mean must be (D,) and whitening (D, D), got {tuple(self.mean.shape)} and "
                             f"{tuple(self.whitening.shape)}")
        if self.intensity is not None and (set(self.intensity) != set(_INTENSITY_NAMES) or any(
                len(self.intensity[k]) != 2 or self.intensity[k][0] > self.intensity[k][1] for k in _INTENSITY_NAMES)):
            raise ValueError(f"intensity must map 'mean' and 'std' to [low, high], got {self.intensity!r}")

    @classmethod
    def fit(cls, train: torch.Tensor, val: torch.Tensor, description: str, dimensionality: str,
            dicom_modalities: list[str], false_alarms: float = 0.01, intensity: np.ndarray | None = None,
            **calibration: Any) -> "DomainProfile":
        """Fit on pooled training features (N, D); threshold: the val score that at most
        ``false_alarms`` of the val features (M, D) exceed; intensity: the training slices'
        `intensity_statistics` (K, 2), for the intensity test (None: no intensity test)."""
        if train.ndim != 2 or train.shape[0] < 2 or val.ndim != 2 or len(val) < 1 or val.shape[1] != train.shape[1]:
            raise ValueError(f"need at least 2 training and 1 val feature rows of the same width, got "
                             f"train {tuple(train.shape)} and val {tuple(val.shape)}")
        if train.shape[0] <= train.shape[1]:
            log.warning("only %d training images for %d features: the description is rough", *train.shape)
        train = train.double()
        mean = train.mean(0)
        cov = torch.cov((train - mean).T)
        cov = (1 - _SHRINKAGE) * cov + _SHRINKAGE * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype)
        values, vectors = torch.linalg.eigh(cov)
        whitening = (vectors * values.clamp_min(1e-12).rsqrt()) @ vectors.T
        profile = cls(description, dimensionality, list(dicom_modalities), mean.float(), whitening.float(), 0.0)
        val_scores = profile.scores_of(val)
        threshold = float(np.quantile(val_scores, 1.0 - false_alarms, method="higher"))
        profile.threshold = threshold
        if intensity is not None:
            profile.intensity = intensity_ranges(intensity)
        profile.calibration = {**calibration, "train_images": int(train.shape[0]), "val_images": int(val.shape[0]),
                               "features": int(train.shape[1]), "target_false_alarms": false_alarms,
                               "val_false_alarms": float(np.mean(val_scores > threshold)),
                               "val_score_median": round(float(np.median(val_scores)), 4)}
        return profile

    def scores_of(self, pooled: torch.Tensor) -> np.ndarray:
        """(B,) scores of pooled features (B, D): RMS of the whitened features."""
        z = (pooled.float() - self.mean) @ self.whitening
        return z.pow(2).mean(1).sqrt().numpy()

    def unlike_intensity(self, statistics: np.ndarray) -> np.ndarray:
        """(B,) bool: slices whose `intensity_statistics` (B, 2) lie outside the training range
        (all False without an intensity test)."""
        statistics = np.asarray(statistics, dtype=np.float64).reshape(-1, len(_INTENSITY_NAMES))
        if self.intensity is None:
            return np.zeros(len(statistics), dtype=bool)
        low, high = (np.array([self.intensity[name][i] for name in _INTENSITY_NAMES]) for i in (0, 1))
        return np.any((statistics < low) | (statistics > high), axis=1)

    def scores(self, maps: list[torch.Tensor]) -> np.ndarray:
        """(B,) scores of a batch's feature maps (as ``Segmenter.encode_images`` returns them)."""
        return self.scores_of(pooled_features(maps))

    def save(self, folder: str | Path) -> dict[str, Any]:
        """Write domain.safetensors and the "domain" entry of model.json (both atomically)."""
        folder = Path(folder)
        with atomic_path(folder / DOMAIN_FILE) as tmp:
            save_file({"mean": self.mean.contiguous(), "whitening": self.whitening.contiguous()}, str(tmp))
            entry = {"file": DOMAIN_FILE, "sha256": sha256_file(tmp), "description": self.description,
                     "dimensionality": self.dimensionality, "dicom_modalities": self.dicom_modalities,
                     "features": "global average of each encoder feature map, concatenated",
                     "score": "RMS of the whitened features (Mahalanobis distance / sqrt(D))",
                     "threshold": self.threshold, "calibration": self.calibration,
                     **({"intensity": self.intensity, "intensity_test": "mean and standard deviation of each slice "
                         f"(0..1), inside the training slices' range widened by {INTENSITY_MARGIN:g} of its width"}
                        if self.intensity is not None else {})}
        update_model_json(folder, domain=entry)
        return entry

    @classmethod
    def load(cls, folder: str | Path, info: dict[str, Any], feature_width: int | None = None) -> "DomainProfile | None":
        """The profile of a model folder; None when model.json has no "domain" entry (older models).

        Raises:
            CheckpointError: the file is missing, modified, unreadable or does not fit the model.
        """
        entry = info.get("domain")
        if entry is None:
            return None
        path = Path(folder) / str(entry.get("file", DOMAIN_FILE))
        if not entry.get("sha256"):
            raise CheckpointError(f"{Path(folder) / 'model.json'}: the 'domain' entry has no sha256; rerun tevia domain")
        tensors = load_checked_tensors(path, entry["sha256"], "copy the model again or rerun tevia domain")
        if set(tensors) != {"mean", "whitening"}:
            raise CheckpointError(f"{path} must hold exactly 'mean' and 'whitening', got {sorted(tensors)}")
        if feature_width is not None and tensors["mean"].shape != (feature_width,):
            raise CheckpointError(f"{path} describes {tuple(tensors['mean'].shape)} features but the model's encoder "
                                  f"gives {feature_width}: rerun tevia domain for this model")
        try:
            return cls(str(entry["description"]), str(entry["dimensionality"]), list(entry.get("dicom_modalities", [])),
                       tensors["mean"].float(), tensors["whitening"].float(), float(entry["threshold"]),
                       dict(entry.get("calibration", {})), entry.get("intensity"))
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{Path(folder) / 'model.json'}: bad 'domain' entry: {exc}") from exc


def slice_ranges(indices: list[int]) -> str:
    """Slice indices as ranges: [0, 1, 2, 5] -> "0-2, 5"."""
    parts: list[str] = []
    for index in indices:
        if parts and index == last + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{index}"
        else:
            parts.append(str(index))
        last = index
    return ", ".join(parts)


class DomainCheck:
    """One input's check: metadata reasons now, slice scores as the pipeline encodes them.

    Args:
        profile: The model's :class:`DomainProfile`, or None (the model cannot check).
        image: The input (its slice count and DICOM Modality, when it has one, are looked at).
        slices: How many 2D slices the model sees.
    """

    def __init__(self, profile: DomainProfile | None, image: sitk.Image, slices: int) -> None:
        self.profile = profile
        self.scores = np.full(slices, np.nan, dtype=np.float32)
        self.intensity_unlike = np.zeros(slices, dtype=bool)
        self.reasons: list[str] = []
        if profile is None:
            return
        if profile.dimensionality == "2d" and slices > 1:
            self.reasons.append(f"it is a 3D volume of {slices} slices, the model was trained on single 2D images")
        modality = image.GetMetaData(DICOM_MODALITY).strip() if image.HasMetaDataKey(DICOM_MODALITY) else ""
        if modality and profile.dicom_modalities and modality.upper() not in profile.dicom_modalities:
            self.reasons.append(f"its DICOM Modality is {modality}, the model was trained on "
                                f"{', '.join(profile.dicom_modalities)}")

    def add(self, start: int, maps: list[torch.Tensor], slices: np.ndarray | torch.Tensor | None = None) -> None:
        """Score slices [start, start + B) from their feature maps (B, C_i, H_i, W_i) and, for the
        intensity test, the slices themselves (B, rows, columns) as scaled for the model (0..1)."""
        if self.profile is not None:
            stop = start + maps[0].shape[0]
            self.scores[start:stop] = self.profile.scores(maps)
            if slices is not None:
                self.intensity_unlike[start:stop] = self.profile.unlike_intensity(intensity_statistics(slices))

    def summary(self) -> dict[str, Any]:
        """The JSON-ready result; its "warning" is None, or a message starting with WARNING_PREFIX."""
        if self.profile is None:
            return {"checked": False, "warning": None,
                    "note": "this model carries no description of its training images: it cannot check whether "
                            "the input is like them (add one with tevia domain)"}
        scored = ~np.isnan(self.scores)
        by_intensity = scored & self.intensity_unlike
        unlike = [int(i) for i in np.flatnonzero(scored & ((self.scores > self.profile.threshold) | by_intensity))]
        count, total = len(unlike), int(scored.sum())
        reasons = list(self.reasons)
        top = float(np.nanmax(self.scores)) if total else 0.0
        if count:
            what = "this image looks" if len(self.scores) == 1 else f"{count} of {total} slices look"
            intensity = (f"; {int(by_intensity.sum())} with intensities (mean or spread) outside the training "
                         "slices' range" if by_intensity.any() else "")
            reasons.insert(0, f"{what} unlike {self.profile.description} (feature distance up to {top:.1f}, "
                              f"threshold {self.profile.threshold:.1f}{intensity})")
        warning = None
        if reasons:
            warning = (WARNING_PREFIX + "; ".join(reasons) + f". The model was trained on {self.profile.description}:"
                       " its masks may be meaningless here; check them before use.")
        return {"checked": True, "trained_on": self.profile.description, "slices": total, "unlike": count,
                "unlike_by_intensity": int(by_intensity.sum()),
                "unlike_slices": slice_ranges(unlike), "threshold": round(self.profile.threshold, 4),
                "score_median": round(float(np.nanmedian(self.scores)), 4) if total else None,
                "score_max": round(top, 4) if total else None, "reasons": reasons, "warning": warning}
