"""Data sets for training and evaluation: CSV + folders (the QaTa-COV19 layout)."""

from tevia.training.data.dataset import TEXT_MODES, CSVSegmentationDataset, find_split_dir, load_image, load_mask

__all__ = ["CSVSegmentationDataset", "TEXT_MODES", "find_split_dir", "load_image", "load_mask"]
