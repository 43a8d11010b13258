"""A memory-bounded LRU cache of image features, and the content fingerprint that keys it."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import numpy as np

__all__ = ["FeatureCache", "fingerprint"]


class FeatureCache:
    """Memory-bounded LRU of a volume's image features, keyed by volume content and options.

    A second prompt on the same volume (same slice axis and intensity scaling) reuses the
    features and skips the vision encoder. Entries larger than the bound are not kept.
    """

    def __init__(self, max_bytes: int = 2 * 1024**3) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[tuple, tuple[list[Any], int]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return sum(size for _, size in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple) -> list[Any] | None:
        """The cached feature chunks for ``key`` (marked recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: tuple, chunks: list[Any], nbytes: int) -> bool:
        """Store feature chunks, evicting the least recently used; False if they exceed the bound."""
        if nbytes > self.max_bytes:
            return False
        self._entries.pop(key, None)
        while self._entries and self.nbytes + nbytes > self.max_bytes:
            self._entries.popitem(last=False)
        self._entries[key] = (chunks, nbytes)
        return True

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()


def fingerprint(array: np.ndarray) -> str:
    """Content hash of a voxel array (shape, dtype and bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{array.shape}{array.dtype}".encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()
