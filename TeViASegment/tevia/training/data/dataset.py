"""A 2D segmentation data set in the CSV + folders layout of QaTa-COV19, for any data.

Layout (the one the TeViA and GuideDecoder reference code reads)::

    root/<split>.csv            columns Image,Description (one row per image)
    root/<Split>/GTs/<Image>    the mask; <Image> is the mask file name, e.g. mask_<name>.png
    root/<Split>/Images/<name>  the image: the mask file name without its "mask_" prefix

The split folder is ``root/<Split>`` (capitalised, as QaTa's ``Train``/``Val``), else
``root/<split>``, else ``root`` itself when it holds ``Images/`` and ``GTs/``.

Images: any file PIL reads (PNG, JPEG, TIFF, BMP, ...), grayscale or RGB, 8 or 16 bit; 16-bit
and float images are min-max scaled to 8 bit per image. Masks: a pixel is foreground when its
value is >= 128 (8-bit 0/255 masks, tolerating JPEG noise), or > 0 when the mask holds only 0
and 1 (0/1 masks); 16-bit masks with values above 255 use >= 32768; palette masks use their
palette indices. Arrays are numpy (H, W) row-major, as PIL gives them.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tevia.prompts import normalise_prompt, swap_sides
from tevia.inference.transforms import resize_planes

__all__ = ["CSVSegmentationDataset", "TEXT_MODES", "find_split_dir", "image_tensor", "load_image", "load_mask"]

logger = logging.getLogger(__name__)

TEXT_MODES = ("given", "empty", "shuffled")
_MASK_PREFIX = "mask_"
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_SKIP_HINT = "fix or remove the row, or pass --skip-bad (skip_bad=True) to skip bad rows"


@dataclass(frozen=True)
class _Row:
    """One usable CSV row: its spreadsheet row number (header = row 1) and its files."""

    row: int
    image: Path
    mask: Path
    text: str
    name: str


def find_split_dir(root: str | Path, split: str) -> Path:
    """The folder holding ``Images/`` and ``GTs/`` for a split.

    Args:
        root: the data set folder (holds ``<split>.csv``).
        split: the split name, e.g. ``"train"`` or ``"val"``.

    Returns:
        ``root/<Split>`` (capitalised), else ``root/<split>``, else ``root``: the first that
        holds both ``Images/`` and ``GTs/``.

    Raises:
        FileNotFoundError: none of them does; the message lists what was looked for.
    """
    root = Path(root)
    candidates = list(dict.fromkeys([root / split.capitalize(), root / split, root]))
    for folder in candidates:
        if (folder / "Images").is_dir() and (folder / "GTs").is_dir():
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"no folder with Images/ and GTs/ for split {split!r}: looked in {looked}. "
        "Put the images in <folder>/Images/ and the masks in <folder>/GTs/."
    )


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float images min-max scaled to mode "L"; others unchanged."""
    if im.mode not in _HIGH_DEPTH_MODES:
        return im
    arr = np.asarray(im, dtype=np.float64)
    low, high = float(arr.min()), float(arr.max())
    scaled = (arr - low) * (255.0 / (high - low)) if high > low else np.zeros_like(arr)
    return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")


def load_image(path: str | Path, channels: int) -> np.ndarray:
    """Read an image as 8-bit, at the file's size.

    Args:
        path: any image file PIL reads.
        channels: 1 gives grayscale (RGB converted by luminance); 3 gives RGB, except that a
            grayscale file stays (H, W) so that callers can repeat it cheaply.

    Returns:
        uint8 array (H, W) or (H, W, 3).
    """
    with Image.open(path) as im:
        im = _to_8bit(im)
        if im.mode != "L" and (channels == 1 or im.mode in _GRAY_MODES):
            im = im.convert("L")
        elif im.mode not in ("L", "RGB"):
            im = im.convert("RGB")
        return np.array(im)


def image_tensor(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """An 8-bit image (H, W) or (H, W, 3) as the model takes it: float32 (1 or 3, H', W') in
    [0, 1] (value / 255), resized to ``size`` as inference resizes (tevia.inference.transforms.resize_planes)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).to(torch.float32).div_(255.0)
    return resize_planes(tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1), size)


def load_mask(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a binary mask (threshold rules in the module docstring).

    Args:
        path: any image file PIL reads.
        size: (H, W) to resize to (nearest neighbour), or None to keep the file's size.

    Returns:
        bool array (H, W), True on the foreground.
    """
    with Image.open(path) as im:
        if im.mode == "P" or im.mode in _HIGH_DEPTH_MODES or im.mode == "L":
            arr = np.asarray(im)
        else:
            arr = np.asarray(im.convert("L"))
    top = arr.max() if arr.size else 0
    if top <= 1:
        fg = arr > 0
    else:
        fg = arr >= (128 if top <= 255 else 32768)
    if size is not None and fg.shape != tuple(size):
        resized = Image.fromarray(fg.astype(np.uint8) * 255).resize(
            (size[1], size[0]), Image.Resampling.NEAREST
        )
        fg = np.asarray(resized) >= 128
    return fg


def _header(path: Path) -> tuple[tuple[int, int], str]:
    """(width, height) and mode from the file header, after checking the file's structure
    (PIL verify: chunk CRCs and completeness for PNG) without decoding the pixels."""
    with Image.open(path) as im:
        size, mode = im.size, im.mode
        im.verify()
    return size, mode


def _check_row(image: Path, mask: Path, text: str) -> tuple[str | None, str]:
    """The problem with one row (None when usable) and the image's PIL mode."""
    if not text.strip():
        return "empty description", ""
    for kind, path in (("image", image), ("mask", mask)):
        if not path.is_file():
            return f"{kind} file not found: {path}", ""
    try:
        image_size, mode = _header(image)
    except Exception as err:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError)
        return f"unreadable image file {image}: {err}", ""
    try:
        mask_size, _ = _header(mask)
    except Exception as err:
        return f"unreadable mask file {mask}: {err}", ""
    if mask_size != image_size:
        return (
            f"mask size {mask_size[0]}x{mask_size[1]} differs from image size "
            f"{image_size[0]}x{image_size[1]} (width x height) for {image.name}",
            "",
        )
    return None, mode


def _read_csv(csv_path: Path) -> list[tuple[int, str, str]]:
    """(spreadsheet row number, Image, Description) for each data row."""
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = {"Image", "Description"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(
                f"{csv_path}: missing column(s) {sorted(missing)}; found {reader.fieldnames}. "
                "The CSV needs a header row with the columns Image,Description."
            )
        return [
            (index + 2, (rec["Image"] or "").strip(), rec["Description"] or "")
            for index, rec in enumerate(reader)
        ]


class CSVSegmentationDataset(torch.utils.data.Dataset):
    """Images, binary masks and text descriptions listed in ``root/<split>.csv``.

    Every row is checked at construction (file presence, header and structure, mask/image
    size, non-empty description) without decoding pixels: a bad row raises ``ValueError``
    naming the CSV file and the row, or with ``skip_bad=True`` is left out and recorded in
    ``self.skipped`` as ``(row number, reason)``. Row numbers count as in a spreadsheet
    (the header is row 1).

    Items are dicts: ``image`` float32 Tensor (C, H, W) in [0, 1], ``mask`` float32 Tensor
    (1, H, W) in {0, 1}, ``text`` str, ``name`` str (the image file name without extension),
    at ``image_size``: images resized as inference resizes them (:func:`image_tensor`), masks
    nearest neighbour.

    Args:
        root: the data set folder holding ``<split>.csv``.
        split: the CSV file name without ``.csv``.
        image_size: (H, W) of the items.
        channels: 1 (grayscale) or 3 (RGB; grayscale files are repeated).
        skip_bad: skip bad rows instead of raising.
        text_mode: ``"given"`` (the CSV's descriptions), ``"empty"`` (every text is ``""``)
            or ``"shuffled"`` (the descriptions permuted among the rows with ``seed``).
        cache: decode and resize every image and mask once at construction and keep them in
            memory (float32 images, bit-packed masks: about 66 KB per 128x128 grayscale item);
            decoding errors then count as bad rows too.
        seed: the seed of the ``"shuffled"`` permutation.
        mirror_sides: swap "left" and "right" in every description (normalised first, as
            inference does): descriptions in the patient's convention read in the image's
            (see tevia.training.data.conventions).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        image_size: tuple[int, int] = (224, 224),
        channels: int = 1,
        skip_bad: bool = False,
        text_mode: str = "given",
        cache: bool = False,
        seed: int = 0,
        mirror_sides: bool = False,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        if text_mode not in TEXT_MODES:
            raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {text_mode!r}")
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size must be (H, W) with positive sizes, got {image_size!r}")
        self.root = Path(root)
        self.split = split
        self.csv_path = self.root / f"{split}.csv"
        if not self.csv_path.is_file():
            found = sorted(p.stem for p in self.root.glob("*.csv")) if self.root.is_dir() else []
            raise FileNotFoundError(
                f"no CSV for split {split!r}: {self.csv_path} does not exist "
                f"(splits found in {self.root}: {found or 'none'})"
            )
        self.split_dir = find_split_dir(self.root, split)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.channels = channels
        self.text_mode = text_mode
        self.seed = seed
        self.mirror_sides = mirror_sides
        self.skipped: list[tuple[int, str]] = []
        rows, modes = self._validate(skip_bad)
        self._rows = rows
        self._cache_images: torch.Tensor | None = None
        self._cache_masks: np.ndarray | None = None
        if cache:
            self._fill_cache(all(m in _GRAY_MODES for m in modes), skip_bad)
        if not self._rows:
            raise ValueError(f"{self.csv_path}: no usable rows (skipped {len(self.skipped)})")
        self._texts = self._make_texts()
        self._names = [row.name for row in self._rows]
        if self.skipped:
            logger.warning("%s: skipped %d bad row(s)", self.csv_path, len(self.skipped))
        logger.info("%s: %d items", self.csv_path, len(self._rows))

    def _validate(self, skip_bad: bool) -> tuple[list[_Row], list[str]]:
        rows: list[_Row] = []
        modes: list[str] = []
        problems: list[tuple[int, str]] = []
        for number, image_name, text in _read_csv(self.csv_path):
            stem = image_name[len(_MASK_PREFIX):] if image_name.startswith(_MASK_PREFIX) else image_name
            image = self.split_dir / "Images" / stem
            mask = self.split_dir / "GTs" / image_name
            problem, mode = _check_row(image, mask, text) if image_name else ("empty Image cell", "")
            if problem is None:
                rows.append(_Row(number, image, mask, text.strip(), Path(stem).stem))
                modes.append(mode)
            else:
                problems.append((number, problem))
        self._record_problems(problems, skip_bad)
        return rows, modes

    def _record_problems(self, problems: list[tuple[int, str]], skip_bad: bool) -> None:
        if not problems:
            return
        if not skip_bad:
            listed = "\n".join(f"  row {n}: {p}" for n, p in problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise ValueError(
                f"{self.csv_path}: {len(problems)} bad row(s) (rows counted as in a spreadsheet, "
                f"header = row 1):\n{listed}{more}\nTo continue: {_SKIP_HINT}."
            )
        for number, problem in problems:
            logger.warning("%s row %d skipped: %s", self.csv_path, number, problem)
        self.skipped.extend(problems)

    def _fill_cache(self, all_gray: bool, skip_bad: bool) -> None:
        height, width = self.image_size
        images = torch.empty((len(self._rows), 1 if self.channels == 1 or all_gray else 3, height, width))
        masks = np.empty((len(self._rows), (height * width + 7) // 8), dtype=np.uint8)
        kept: list[_Row] = []
        problems: list[tuple[int, str]] = []
        for row in self._rows:
            try:
                image = image_tensor(load_image(row.image, self.channels), self.image_size)
                mask = load_mask(row.mask, self.image_size)
            except Exception as err:  # any decoding failure of PIL
                problems.append((row.row, f"cannot decode {row.image.name} or its mask: {err}"))
                continue
            images[len(kept)] = image  # a grayscale image broadcasts over 3 cached channels
            masks[len(kept)] = np.packbits(mask.reshape(-1))
            kept.append(row)
        self._record_problems(problems, skip_bad)
        self._rows = kept
        self._cache_images = images[: len(kept)]
        self._cache_masks = masks[: len(kept)]

    def _make_texts(self) -> list[str]:
        given = [row.text for row in self._rows]
        if self.mirror_sides:
            given = [swap_sides(normalise_prompt(text)) for text in given]
        if self.text_mode == "empty":
            return [""] * len(given)
        if self.text_mode == "shuffled":
            order = np.random.default_rng(self.seed).permutation(len(given))
            return [given[i] for i in order]
        return given

    @property
    def texts(self) -> list[str]:
        """The text of each item (after ``text_mode``), in item order (do not modify)."""
        return self._texts

    @property
    def names(self) -> list[str]:
        """The name of each item: its image file name without extension (do not modify)."""
        return self._names

    @property
    def rows(self) -> list[int]:
        """The CSV row number (spreadsheet numbering, header = 1) of each item."""
        return [row.row for row in self._rows]

    @property
    def image_paths(self) -> list[Path]:
        """The image file of each item."""
        return [row.image for row in self._rows]

    def __len__(self) -> int:
        return len(self._rows)

    def _image_and_mask(self, index: int) -> tuple[torch.Tensor, np.ndarray]:
        """float32 image (1 or 3, H, W) (see :func:`image_tensor`) and bool mask (H, W) of one item."""
        if self._cache_images is not None and self._cache_masks is not None:
            height, width = self.image_size
            bits = np.unpackbits(self._cache_masks[index], count=height * width)
            return self._cache_images[index], bits.reshape(height, width).astype(bool)
        row = self._rows[index]
        try:
            return (image_tensor(load_image(row.image, self.channels), self.image_size),
                    load_mask(row.mask, self.image_size))
        except Exception as err:  # any decoding failure of PIL
            raise ValueError(
                f"{self.csv_path} row {row.row}: cannot decode {row.image} or {row.mask}: {err}; "
                f"{_SKIP_HINT} (with cache=True, decoding problems are found at start-up)"
            ) from err

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        tensor, mask = self._image_and_mask(index)
        if tensor.shape[0] != self.channels:
            tensor = tensor.expand(self.channels, -1, -1).contiguous()
        return {
            "image": tensor,
            "mask": torch.from_numpy(mask).to(torch.float32).unsqueeze(0),
            "text": self._texts[index],
            "name": self._rows[index].name,
        }

    def __repr__(self) -> str:
        return (
            f"CSVSegmentationDataset({str(self.root)!r}, {self.split!r}, n={len(self)}, "
            f"image_size={self.image_size}, channels={self.channels}, text_mode={self.text_mode!r}, "
            f"skipped={len(self.skipped)})"
        )
