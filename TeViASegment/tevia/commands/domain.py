"""``tevia domain``: describe a model's training images in its folder (see tevia.inference.domain).

``tevia domain --model default --data ../shared/data/qata-cov19 --config configs/default-qata.yaml``
reads every train and val image of the data set as ``tevia predict`` would, pools the vision
encoder's features, fits the profile on train, calibrates its threshold on val (at most 1%
false alarms by default) and writes domain.safetensors + the "domain" entry of model.json.
``tevia train`` does the same when it exports a model.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from tevia.checkpoint import CheckpointError, read_model_json
from tevia.commands.cli import report_error
from tevia.model_folders import resolve_model
from tevia.config import TrainConfig, load_config
from tevia.training.data.dataset import CSVSegmentationDataset
from tevia.inference.domain import DIMENSIONALITIES, DomainProfile, intensity_statistics, pooled_features
from tevia.inference.pipeline import volume_slices
from tevia.volume.io import read_input
from tevia.inference.transforms import model_input
from tevia.volume.preprocess import IntensityScaler

__all__ = ["configure_parser", "scaled_slices", "image_features", "split_features", "split_intensity", "describe_model",
           "declaration_of", "main"]

log = logging.getLogger("tevia.inference.domain")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``tevia domain`` options."""
    parser.add_argument("--model", default="default", help="bundled model name or model folder (default: default)")
    parser.add_argument("--data", type=Path, required=True, help="the training data set folder (CSV + folders)")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--val-split", default="val")
    parser.add_argument("--config", type=Path,
                        help="training YAML whose train.modality / dimensionality / dicom_modalities declare the domain")
    parser.add_argument("--description", help="what the training images are, e.g. '2D frontal chest X-rays'")
    parser.add_argument("--dimensionality", choices=DIMENSIONALITIES)
    parser.add_argument("--dicom-modalities", help="DICOM Modality codes of the training images, e.g. CR,DX")
    parser.add_argument("--false-alarms", type=float, default=0.01, help="target false-alarm rate on val (0.01)")
    parser.add_argument("--device", default="auto")


def scaled_slices(source: Any) -> np.ndarray:
    """(S, rows, columns) float32: every (axial) slice of an image file, DICOM folder or ITK image,
    scaled as ``segment_volume`` scales them (0..1)."""
    image = read_input(source)[0] if isinstance(source, (str, Path)) else source
    volume, array, layout, percentiles = volume_slices(image, "axial")
    scaler, _ = IntensityScaler.from_volume(array, None, percentiles)
    return scaler(layout.view(array))


def image_features(segmenter: Any, source: Any, batch_size: int = 16) -> torch.Tensor:
    """(S, D) pooled features of every (axial) slice of an image file, DICOM folder or ITK image,
    scaled as ``segment_volume`` scales them (no cache, no prompts)."""
    slices = scaled_slices(source)
    pooled = []
    for start in range(0, len(slices), batch_size):
        batch = torch.from_numpy(slices[start:start + batch_size])
        features = segmenter.encode_images(model_input(batch, segmenter.spec))
        pooled.append(pooled_features(features.maps))
    return torch.cat(pooled)


def _split_paths(segmenter: Any, root: str | Path, split: str) -> list[Path]:
    return CSVSegmentationDataset(root, split, image_size=tuple(segmenter.spec.image_size)).image_paths


def split_features(segmenter: Any, root: str | Path, split: str, every: int = 1) -> torch.Tensor:
    """(N, D) pooled features of the images of a data set split (every k-th row)."""
    paths = _split_paths(segmenter, root, split)[::every]
    rows = [image_features(segmenter, p) for p in tqdm(paths, desc=split, unit="image", file=sys.stderr)]
    return torch.cat(rows)


def split_intensity(segmenter: Any, root: str | Path, split: str, every: int = 1) -> np.ndarray:
    """(N, 2) `intensity_statistics` of the slices of a data set split's images (every k-th row)."""
    return np.concatenate([intensity_statistics(scaled_slices(p))
                           for p in _split_paths(segmenter, root, split)[::every]])


def describe_model(segmenter: Any, folder: str | Path, root: str | Path, train_split: str, val_split: str,
                   declaration: dict[str, Any], false_alarms: float = 0.01,
                   extra_train: list[tuple[str, str]] | tuple = (), train_every: int = 1) -> DomainProfile:
    """Fit the profile of a loaded model on a data set, write it into the model folder, return it.

    extra_train: (folder, split) of more training images the profile describes too (data.extra_train).
    train_every: describe every k-th row of the train split (data.train_every: the rows trained on).
    """
    sources = [(root, train_split, train_every), *((source, split, 1) for source, split in extra_train)]
    train = torch.cat([split_features(segmenter, source, split, every) for source, split, every in sources])
    intensity = np.concatenate([split_intensity(segmenter, source, split, every) for source, split, every in sources])
    val = split_features(segmenter, root, val_split)
    extra = {"extra_train": [f"{extra_root}/{split}" for extra_root, split in extra_train]} if extra_train else {}
    profile = DomainProfile.fit(train, val, false_alarms=false_alarms, intensity=intensity, data=str(root),
                                train_split=train_split, val_split=val_split, **extra, **declaration)
    profile.save(folder)
    log.info("domain of %s: %s, threshold %.3f (%.2f%% of %d val images above it)", folder, profile.description,
             profile.threshold, 100 * profile.calibration["val_false_alarms"], len(val))
    return profile


def declaration_of(config: TrainConfig) -> dict[str, Any]:
    """description / dimensionality / dicom_modalities as a training config declares them."""
    declared = {"dimensionality": config.dimensionality, "dicom_modalities": list(config.dicom_modalities)}
    return {"description": config.modality, **declared} if config.modality else declared


def main(args: argparse.Namespace) -> int:
    """Run ``tevia domain``; 0 on success, 2 on bad arguments or an unusable model.

    The domain's declaration comes from the options, else --config, else the model's earlier
    domain entry, else model.json's modality, 2d and no DICOM modalities.
    """
    from tevia.inference.segmenter import Segmenter

    try:
        if not 0.0 < args.false_alarms < 1.0:
            raise ValueError(f"--false-alarms must be between 0 and 1, got {args.false_alarms}")
        folder = resolve_model(args.model)
        _, info = read_model_json(folder)
        declaration = {"description": info.get("modality") or "the training images", "dimensionality": "2d",
                       "dicom_modalities": []}
        declaration.update({k: v for k, v in (info.get("domain") or {}).items() if k in declaration})
        if args.config:
            declaration.update(declaration_of(load_config(args.config).train))
        if args.description:
            declaration["description"] = args.description
        if args.dimensionality:
            declaration["dimensionality"] = args.dimensionality
        if args.dicom_modalities is not None:
            declaration["dicom_modalities"] = [v.strip().upper() for v in args.dicom_modalities.split(",") if v.strip()]
        segmenter = Segmenter.load(folder, device=args.device, check_domain=False)  # the profile is replaced
        describe_model(segmenter, folder, args.data, args.train_split, args.val_split, declaration, args.false_alarms)
    except (ValueError, FileNotFoundError, CheckpointError) as error:
        return report_error("domain", error)
    return 0
