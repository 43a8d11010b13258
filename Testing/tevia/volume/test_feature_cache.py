"""The feature cache and its keys: LRU within a byte bound, hit and miss counts, the remembered
intensity scalings, and the voxel fingerprint that keys them (its documented construction)."""

import hashlib

import numpy as np
import pytest

from tevia.inference.pipeline import _intensity_scaling
from tevia.volume.cache import FeatureCache, fingerprint
from tevia.volume.preprocess import WINDOWS

MIB = 1024**2


def test_a_fresh_cache_counts_hits_and_misses_from_zero():
    cache = FeatureCache(100)
    assert (cache.hits, cache.misses, len(cache), cache.nbytes) == (0, 0, 0, 0)
    assert cache.get("volume") is None
    assert (cache.hits, cache.misses) == (0, 1)
    assert cache.put("volume", ["features"], 10)
    assert cache.get("volume") == ["features"]
    assert (cache.hits, cache.misses) == (1, 1)


def test_the_least_recently_used_entry_leaves_first_and_too_large_ones_never_enter():
    cache = FeatureCache(10)
    cache.put("a", ["a"], 4)
    cache.put("b", ["b"], 4)
    cache.get("a")  # a is now the most recently used
    cache.put("c", ["c"], 4)
    assert cache.get("b") is None and cache.get("a") == ["a"] and cache.get("c") == ["c"]
    assert cache.nbytes == 8
    assert not cache.put("huge", ["x"], 11) and len(cache) == 2, "an entry over the bound evicts nothing"
    cache.put("a", ["a2"], 6)  # a replaced: counted once, c stays (6 + 4 = 10)
    assert cache.nbytes == 10 and cache.get("a") == ["a2"] and cache.get("c") == ["c"]
    with pytest.raises(ValueError, match="max_bytes"):
        FeatureCache(-1)


def test_scalings_of_the_last_eight_volumes_are_remembered():
    cache = FeatureCache(0)
    for i in range(8):
        cache.put_scaling(("volume", i), i)
    assert cache.scaling(("volume", 0)) == 0  # touched: now the most recent
    cache.put_scaling(("volume", 8), 8)
    assert cache.scaling(("volume", 1)) is None and cache.scaling(("volume", 0)) == 0
    assert [cache.scaling(("volume", i)) for i in range(2, 9)] == list(range(2, 9))
    cache.clear()
    assert cache.scaling(("volume", 0)) is None and len(cache) == 0


def _documented_fingerprint(array: np.ndarray) -> str:
    """SHA-256 of shape, dtype and byte count, then of the SHA-256 of each 16 MiB chunk."""
    data = np.ascontiguousarray(array).tobytes()
    digest = hashlib.sha256(f"{array.shape}{array.dtype.str}{len(data)}".encode())
    for start in range(0, len(data), 16 * MIB):
        digest.update(hashlib.sha256(data[start:start + 16 * MIB]).digest())
    return digest.hexdigest()


def test_the_fingerprint_is_its_documented_hash_on_any_thread_count():
    """40 MiB of int16 voxels: three chunks, hashed on one thread or four, give the documented
    digest; one changed voxel in the last chunk, another shape or dtype give another."""
    voxels = np.arange(20 * MIB, dtype=np.int16).reshape(80, 512, 512)
    expected = _documented_fingerprint(voxels)
    assert fingerprint(voxels, threads=1) == fingerprint(voxels, threads=4) == expected
    assert fingerprint(np.asfortranarray(voxels), threads=2) == expected  # the content, not the memory layout
    changed = voxels.copy()
    changed[-1, -1, -1] += 1
    assert fingerprint(changed, threads=4) != expected
    assert fingerprint(voxels.reshape(160, 256, 512), threads=4) != expected
    assert fingerprint(voxels.view(np.uint16), threads=4) != expected


def test_the_remembered_scaling_is_keyed_by_volume_window_and_percentiles():
    """A second prompt on the same volume with the same window reuses the scaling; another
    window, other percentiles or another volume compute their own, from that window."""
    rng = np.random.default_rng(0)
    ct = rng.normal(0.0, 300.0, (4, 16, 16)).astype(np.float32)
    cache = FeatureCache()
    lung, _ = _intensity_scaling(ct, "ct-1", "lung", (0.5, 99.5), cache)
    centre, width = WINDOWS["lung"]
    assert (lung.low, lung.high) == (centre - width / 2, centre + width / 2)
    again, _ = _intensity_scaling(ct, "ct-1", "lung", (0.5, 99.5), cache)
    assert again is lung
    bone, _ = _intensity_scaling(ct, "ct-1", "bone", (0.5, 99.5), cache)
    centre, width = WINDOWS["bone"]
    assert (bone.low, bone.high) == (centre - width / 2, centre + width / 2)
    plain, _ = _intensity_scaling(ct, "ct-1", None, (0.5, 99.5), cache)
    wider, _ = _intensity_scaling(ct, "ct-1", None, (0.0, 100.0), cache)
    assert (wider.low, wider.high) == (float(ct.min()), float(ct.max())) != (plain.low, plain.high)
    other, _ = _intensity_scaling(ct * 2, "ct-2", None, (0.5, 99.5), cache)
    assert other.high == pytest.approx(2 * plain.high, rel=1e-5)
