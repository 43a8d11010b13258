"""What a second request on the same voxels reuses: the fingerprint, the intensity scaling, the read image
(tevia.inference.session.InferenceSession.read, behind the worker and `tevia predict`)."""
import io
import json
import os
import shutil
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import tevia.volume.io as volume_io
from tevia.inference.pipeline import FeatureCache, SegmentOptions, image_fingerprint, segment_volume
from tevia.volume.cache import fingerprint
from tevia.volume.io import input_signature, read_image
from tevia.volume.preprocess import IntensityScaler
from tevia.inference.session import InferenceSession
from tevia.serving.worker import RequestError, Worker
from volume_fixtures import ct_path, volumes_dir  # noqa: F401 (pytest fixtures)

torch.set_num_threads(1)


def test_fingerprint_hashes_every_byte_shape_and_dtype(ct_path):
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_path)))
    big = np.tile(array, (12, 1, 1))  # 89 MB: several chunks, hashed on threads
    reference = fingerprint(big, threads=1)
    assert fingerprint(big, threads=2) == fingerprint(np.asfortranarray(big)) == reference
    changed = big.copy()
    changed.reshape(-1)[-1] += 1  # the last byte of the last chunk
    assert fingerprint(changed) != reference
    changed = big.copy()
    changed.reshape(-1)[len(changed.reshape(-1)) // 2] += 1
    assert fingerprint(changed) != reference
    assert fingerprint(big.reshape(-1, 101, 61)) != reference
    assert fingerprint(big.view(np.uint16)) != reference
    assert fingerprint(np.zeros((0, 3))) != fingerprint(np.zeros((3, 0)))


class _CountingScaler:
    def __init__(self, monkeypatch):
        self.calls = 0
        original = IntensityScaler.from_volume.__func__

        def counted(cls, *args, **kwargs):
            self.calls += 1
            return original(cls, *args, **kwargs)

        monkeypatch.setattr(IntensityScaler, "from_volume", classmethod(counted))


def test_second_request_reuses_the_intensity_scaling(tiny_model_dir, ct_path, monkeypatch):
    from tevia.inference.segmenter import Segmenter

    segmenter = Segmenter.load(tiny_model_dir, device="cpu")
    image, _ = read_image(ct_path)
    counter = _CountingScaler(monkeypatch)
    cache = FeatureCache()
    options = SegmentOptions(threshold=0.4649, batch_size=1)  # one slice per step: batch-independent rounding
    first = segment_volume(segmenter, image, ["liver"], options, feature_cache=cache)
    second = segment_volume(segmenter, image, ["liver"], options, feature_cache=cache)
    assert counter.calls == 1 and second.timings["cache_hit"] == 1.0
    plain = segment_volume(segmenter, image, ["liver"], options)  # no cache: computed afresh
    assert counter.calls == 2
    labels = sitk.GetArrayFromImage(first.labelmap)
    assert 0 < labels.sum() < labels.size
    assert np.array_equal(sitk.GetArrayViewFromImage(second.labelmap), labels)
    assert np.array_equal(sitk.GetArrayViewFromImage(plain.labelmap), labels)
    assert first.voxels == second.voxels == plain.voxels == {"liver": int(labels.sum())}
    # other scaling options, or one voxel changed: scanned again
    segment_volume(segmenter, image, ["liver"], SegmentOptions(threshold=0.4649, window="abdomen"), feature_cache=cache)
    assert counter.calls == 3
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] += 1
    changed = sitk.GetImageFromArray(array)
    changed.CopyInformation(image)
    third = segment_volume(segmenter, changed, ["liver"], options, feature_cache=cache)
    assert counter.calls == 4 and third.timings["cache_hit"] == 0.0


def test_input_signature_follows_every_change(ct_path, volumes_dir, tmp_path):
    path = tmp_path / "ct.nii.gz"
    shutil.copyfile(ct_path, path)
    later = time.time() + 60
    assert input_signature(path) is None  # just written: not trusted yet
    signature = input_signature(path, now=later)
    assert signature is not None and signature == input_signature(path, now=later)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert input_signature(path, now=later) not in (None, signature)
    assert input_signature(tmp_path / "missing.nii.gz", now=later) is None
    folder = tmp_path / "dicom"
    shutil.copytree(volumes_dir / "ct-head-dicom-12", folder)
    before = input_signature(folder, now=later)
    first = sorted(folder.iterdir())[0]
    first.write_bytes(first.read_bytes())  # same bytes, rewritten
    assert input_signature(folder, now=later) not in (None, before)


def test_session_reuses_the_last_read_image_until_the_file_changes(ct_path, tmp_path, monkeypatch):
    monkeypatch.setattr(volume_io, "SETTLE_SECONDS", 0.0)  # trust fresh files: no waiting in a test
    read = sitk.ReadImage(str(ct_path))
    image = sitk.GetImageFromArray(sitk.GetArrayFromImage(read))  # geometry without NIfTI header fields
    image.CopyInformation(read)
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(image, str(path), useCompression=False)
    session = InferenceSession()
    first, _, reused_first = session.read(str(path))
    second, _, reused_second = session.read(str(path))
    assert (reused_first, reused_second) == (False, True) and second is first
    kept = session._kept.fingerprint
    assert kept == image_fingerprint(first)  # what the pipeline keys its caches with
    # the same size, other voxels: read again
    flipped = sitk.GetImageFromArray(np.ascontiguousarray(sitk.GetArrayFromImage(image)[:, :, ::-1]))
    flipped.CopyInformation(image)
    size = path.stat().st_size
    sitk.WriteImage(flipped, str(path), useCompression=False)
    assert path.stat().st_size == size
    third, _, reused_third = session.read(str(path))
    assert reused_third is False
    assert np.array_equal(sitk.GetArrayViewFromImage(third), sitk.GetArrayViewFromImage(flipped))
    assert not np.array_equal(sitk.GetArrayViewFromImage(third), sitk.GetArrayViewFromImage(first))
    assert session._kept.fingerprint == image_fingerprint(third) != kept
    # another input replaces the kept one
    other = tmp_path / "other.nrrd"
    sitk.WriteImage(image, str(other), useCompression=False)
    assert session.read(str(other))[2] is False and session.read(str(path))[2] is False


def test_session_does_not_trust_a_file_changed_just_now(ct_path, tmp_path):
    path = tmp_path / "ct.nii.gz"
    shutil.copyfile(ct_path, path)
    session = InferenceSession()
    assert session.read(str(path))[2] is False and session.read(str(path))[2] is False


def _raw_input(folder, array, name):
    np.save(folder / f"{name}.npy", array)
    (folder / f"{name}.json").write_text(json.dumps({"shape_kji": list(array.shape), "ijk_to_ras": np.eye(4).tolist()}))
    return {"npy": str(folder / f"{name}.npy"), "geometry": str(folder / f"{name}.json")}


def test_session_reuses_an_input_by_its_key_without_looking_at_the_files(ct_path, tmp_path):
    """A client's input_key stands for the content: the same key and input are reused at once (no
    settling time, no stat, no hash); a new key, or the key with another input, is read again."""
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_path)))
    source = _raw_input(tmp_path, array, "v")  # just written: without a key it is never reused
    session = InferenceSession()
    assert session.read(source)[2] is False and session.read(source)[2] is False
    first, _, reused = session.read(source, "key-1")
    assert reused is False
    kept = session._kept.fingerprint
    assert kept == image_fingerprint(first)
    second, _, reused = session.read(source, "key-1")
    assert reused is True and second is first and session._kept.fingerprint == kept
    changed = array.copy()
    changed[0, 0, 0] += 1
    np.save(tmp_path / "v.npy", changed)  # new content: the client sends a new key with it
    third, _, reused = session.read(source, "key-2")
    assert reused is False and sitk.GetArrayViewFromImage(third)[0, 0, 0] == changed[0, 0, 0]
    assert session._kept.fingerprint == image_fingerprint(third) != kept
    other = _raw_input(tmp_path, array, "w")
    assert session.read(other, "key-2")[2] is False, "the same key with another input is not the same input"
    assert session.read(source, "key-2")[2] is False and session.read(source)[2] is False


@pytest.mark.parametrize("key", [5, "", "k" * 201, ["a"]])
def test_a_bad_input_key_is_a_bad_request_before_any_work(key, tmp_path):
    worker = Worker(io.StringIO())
    request = {"id": "s", "type": "segment", "input": str(tmp_path / "v.nrrd"), "prompts": ["liver"],
               "output": str(tmp_path / "m.npy"), "input_key": key}
    with pytest.raises(RequestError, match="'input_key' must be a non-empty string") as error:
        worker._handle_segment(request)
    assert error.value.code == "bad_request" and worker.session.segmenter is None, "refused before loading a model"
