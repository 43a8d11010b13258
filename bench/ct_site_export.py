"""A site's corrected CT slices into a training set, through the Slicer module's "Add to training set".

The covid-ct-slices val split holds two Radiopaedia-style scans (a circular, zoomed field of
view, brighter and noisier, stored upside down) that the CT model `ct-lung-infection` never
trained on: they stand for a site's own scans, whose masks an annotator corrected. Each scan
becomes what a site has in Slicer: a volume node (its slices stacked into one volume file,
loaded by the Volumes logic of a real slicer-core MRML scene, with the geometry of a supine
axial CT so that the module's axial slices are the PNG slices as stored) and a segmentation
node holding the corrected masks, one segment per description (the text an annotator types
for the slices it fits). `TeViASegmentLogic.addToTrainingSet` then appends each segment's
slices to the training set folder, exactly as the module's button does (TeViASegmentLib.
training_export): the volume's own 8-bit scaling, the slices as the worker cuts them, the
descriptions in the model's side convention, the `Volume` column naming the scan.

Scan boundaries come from the data: a slice whose mean absolute grey difference to the
previous one exceeds `SCAN_JUMP` starts a new scan (neighbouring slices of one scan differ by
at most 32, even in the noisy Radiopaedia scans; scan starts by 50 or more).

Usage (from the repository root; writes runs/ct-site/dataset/train.csv + Train/):
    python bench/ct_site_export.py --out runs/ct-site/dataset
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO / "TeViASegment", REPO / "Testing"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

__all__ = ["CT_DATA", "SCAN_JUMP", "SITE_SCANS", "OTHER_ACQUISITION", "Scan", "find_scans", "scan_slices",
           "add_scan_to_training_set", "export_site", "main"]

log = logging.getLogger("ct_site_export")

CT_DATA = REPO.parent / "shared" / "data" / "covid-ct-slices"
SCAN_JUMP = 40.0
"""Mean absolute grey difference (0..255) between neighbouring slices above which a new scan starts."""
SITE_SCANS = {"radiopaedia-1": ("ct_1247", "ct_1257"), "radiopaedia-2": ("ct_1258", "ct_1374")}
"""The val split's Radiopaedia-style scans (first and last slice), as `find_scans` finds them."""
OTHER_ACQUISITION = ("ct_1081", "ct_1246")
"""The val scan of the training scans' acquisition (full field of view, table visible)."""


@dataclass(frozen=True)
class Scan:
    """One scan's slices of a split, in file order: image stems (ct_NNNN) and descriptions."""

    stems: tuple[str, ...]
    descriptions: tuple[str, ...]

    @property
    def span(self) -> tuple[str, str]:
        return self.stems[0], self.stems[-1]


def _split_rows(root: Path, split: str) -> list[tuple[str, str]]:
    with open(root / f"{split}.csv", newline="", encoding="utf-8-sig") as handle:
        return [(row["Image"].removeprefix("mask_").removesuffix(".png"), row["Description"])
                for row in csv.DictReader(handle)]


def _image(root: Path, split: str, stem: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(root / split.capitalize() / "Images" / f"{stem}.png")))


def find_scans(root: str | Path = CT_DATA, split: str = "val", jump: float = SCAN_JUMP) -> list[Scan]:
    """The scans of a split, cut where neighbouring slices jump (`SCAN_JUMP`).

    Raises:
        ValueError: a jump that is not positive.
    """
    if jump <= 0:
        raise ValueError(f"jump must be positive, got {jump}")
    root = Path(root)
    scans: list[list[tuple[str, str]]] = []
    previous = None
    for stem, description in _split_rows(root, split):
        image = _image(root, split, stem).astype(np.float32)
        if previous is None or float(np.abs(image - previous).mean()) > jump:
            scans.append([])
        scans[-1].append((stem, description))
        previous = image
    return [Scan(tuple(s for s, _ in rows), tuple(d for _, d in rows)) for rows in scans]


def scan_slices(root: str | Path, split: str, scan: Scan) -> tuple[np.ndarray, np.ndarray]:
    """(images, masks) of a scan, each (K, H, W) uint8 in file order (masks 0/1)."""
    root, folder = Path(root), Path(root) / split.capitalize()
    images = np.stack([_image(root, split, stem) for stem in scan.stems])
    masks = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "GTs" / f"mask_{stem}.png"))) >= 128
                      for stem in scan.stems]).astype(np.uint8)
    return images, masks


def add_scan_to_training_set(logic, images: np.ndarray, masks: np.ndarray, descriptions: list[str] | tuple[str, ...],
                             name: str, dataset_dir: str | Path, model: str, work_dir: str | Path) -> list[str]:
    """Load one scan into the scene as a volume node with its corrected segments, and add each
    segment to the training set with the Logic (the module's "Add to training set").

    Args:
        logic: a `TeViASegmentLogic` on the current scene (`slicer.mrmlScene`).
        images: (K, H, W) uint8 axial slices, radiological display (patient's right on the
            image's left, anterior at the top as a supine scan shows it).
        masks: (K, H, W), nonzero inside the corrected infection.
        descriptions: one per slice, naming image sides (the model's convention).
        name: the volume node's name (the training set's `Volume` column).
        dataset_dir: the training set folder.
        model: the model whose side convention the descriptions are exported in.
        work_dir: where the scan's volume file is written before Slicer loads it.

    Returns:
        The mask file names added, in the order the segments were added.

    Raises:
        ValueError: images, masks and descriptions that do not match.
    """
    import slicer
    from TeViASegmentLib import scene

    if images.ndim != 3 or images.shape != masks.shape or len(descriptions) != len(images):
        raise ValueError(f"images {images.shape}, masks {masks.shape} and {len(descriptions)} descriptions must "
                         "describe the same (K, H, W) slices")
    path = Path(work_dir) / f"{name}.nrrd"
    volume_file = sitk.GetImageFromArray(images)  # identity direction (LPS): columns to the left, rows to posterior
    volume_file.SetSpacing((0.8, 0.8, 5.0))
    sitk.WriteImage(volume_file, str(path))
    volume = slicer.modules.volumes.logic().AddArchetypeVolume(str(path), name)
    if volume is None:
        raise ValueError(f"Slicer could not load {path}")
    texts = list(dict.fromkeys(descriptions))
    labelmap = np.zeros(images.shape, np.uint8)
    for index, (mask, text) in enumerate(zip(masks, descriptions)):
        labelmap[index][mask != 0] = texts.index(text) + 1
    segmentation, segment_ids = scene.import_labelmap(labelmap, {i + 1: t for i, t in enumerate(texts)}, volume)
    added: list[str] = []
    for segment_id in segment_ids:
        added += logic.addToTrainingSet(volume, segmentation, segment_id, str(dataset_dir), convention="image",
                                        model=model)
    return added


def export_site(dataset_dir: str | Path, model: str, root: str | Path = CT_DATA, split: str = "val",
                scans: dict[str, tuple[str, str]] | None = None, limit: int | None = None) -> dict[str, list[str]]:
    """Every site scan into the training set folder, on a fresh slicer-core scene.

    Args:
        dataset_dir: the training set folder (rows are appended to its train.csv).
        model: the model the descriptions are exported for (a model folder or name).
        root, split: where the scans are.
        scans: volume name -> (first, last) image stem; `SITE_SCANS` when None.
        limit: export only the first `limit` slices of each scan (tests).

    Returns:
        Volume name -> the mask file names added.

    Raises:
        ValueError: a scan span that is not one scan of the split.
    """
    from slicer_fixtures import scene_with_module_logics  # before TeViASegment: the module base classes

    import TeViASegment
    from TeViASegmentLib import settings

    found = {scan.span: scan for scan in find_scans(root, split)}
    added: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="ct-site-") as work, scene_with_module_logics():
        logic = TeViASegment.TeViASegmentLogic(settingsStore=settings.JsonFileSettings(Path(work) / "settings.json"))
        for name, span in (scans or SITE_SCANS).items():
            if tuple(span) not in found:
                raise ValueError(f"scans[{name!r}] = {span} is not a scan of {root}/{split}.csv; its scans are "
                                 f"{sorted(found)}")
            scan = found[tuple(span)]
            images, masks = scan_slices(root, split, scan)
            added[name] = add_scan_to_training_set(logic, images[:limit], masks[:limit], scan.descriptions[:limit],
                                                   name, dataset_dir, model, work)
            log.info("%s (%s-%s): %d slices added to %s", name, *span, len(added[name]), dataset_dir)
    return added


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ct-site/dataset"), help="the training set folder")
    parser.add_argument("--model", default="ct-lung-infection",
                        help="the model whose side convention the descriptions use (name or folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if (args.out / "train.csv").exists():
        log.error("%s already holds a training set: choose another --out (rows would be added twice)", args.out)
        return 2
    export_site(args.out, args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
