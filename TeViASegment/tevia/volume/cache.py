"""A memory-bounded LRU cache of image features, and the content fingerprint that keys it."""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["FeatureCache", "fingerprint"]

_CHUNK_BYTES = 16 * 1024**2
_MAX_SCALINGS = 8


class FeatureCache:
    """Memory-bounded LRU of a volume's image features, keyed by volume content and options.

    A second prompt on the same volume (same slice axis and intensity scaling) reuses the
    features and skips the vision encoder. Entries larger than the bound are not kept.

    Next to the features it remembers the intensity scaling of the last few volumes (a few
    numbers each, keyed by fingerprint and scaling options), so a second prompt does not scan
    the voxels again.
    """

    def __init__(self, max_bytes: int = 2 * 1024**3) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[tuple, tuple[list[Any], int]] = OrderedDict()
        self._scalings: OrderedDict[tuple, Any] = OrderedDict()
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

    def scaling(self, key: tuple) -> Any | None:
        """The intensity scaling remembered for ``key`` (fingerprint and options), or None."""
        value = self._scalings.get(key)
        if value is not None:
            self._scalings.move_to_end(key)
        return value

    def put_scaling(self, key: tuple, value: Any) -> None:
        """Remember an intensity scaling, forgetting the oldest beyond a few volumes."""
        self._scalings[key] = value
        self._scalings.move_to_end(key)
        while len(self._scalings) > _MAX_SCALINGS:
            self._scalings.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry (features and scalings)."""
        self._entries.clear()
        self._scalings.clear()


def fingerprint(array: np.ndarray, threads: int | None = None) -> str:
    """Content hash of a voxel array: its shape, dtype and every byte.

    SHA-256 over the shape, the dtype and the SHA-256 digests of consecutive 16 MiB chunks,
    the chunks hashed on ``threads`` threads (hashlib releases the GIL). With the SHA
    instructions of current x86 and ARM CPUs, a 512x512x300 int16 CT (150 MB) takes about
    45 ms on 2 cores (one blake2b pass took 170 ms).

    Args:
        array: Voxels of any shape and dtype (copied only when not C-contiguous).
        threads: Threads to hash with (default: the CPU count, at most 8).
    """
    data = memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    chunks = [data[i:i + _CHUNK_BYTES] for i in range(0, len(data), _CHUNK_BYTES)]
    threads = min(len(chunks), threads or min(8, os.cpu_count() or 1))
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            digests = list(pool.map(lambda chunk: hashlib.sha256(chunk).digest(), chunks))
    else:
        digests = [hashlib.sha256(chunk).digest() for chunk in chunks]
    digest = hashlib.sha256(f"{array.shape}{array.dtype.str}{len(data)}".encode())
    for chunk_digest in digests:
        digest.update(chunk_digest)
    return digest.hexdigest()
