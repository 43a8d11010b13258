"""The server over the inference session (tevia.inference.session), on a real server on 127.0.0.1: it
describes the model as every front end does, and a GPU out-of-memory falls back to the CPU as
in the worker (Testing/tevia/serving/test_volume_worker.py) instead of answering 503."""

from __future__ import annotations

import httpx
import numpy as np
import SimpleITK as sitk

from conftest import GpuOutOfMemory
from server_helpers import TOKEN, LiveServer, auth, read_answer, segmenter, small_nrrd  # noqa: F401 (fixtures)
from tevia.serving.server import ServerSettings, create_app
from tevia.inference.session import describe_model
from tevia.inference.pipeline import segment_volume

FALLBACK = "out of memory on cuda even with one slice per batch: falling back to the CPU (slower)"


def _post(server: LiveServer, volume: bytes) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/segment", headers=auth(), data={"text": ["liver"]},
                      files={"volume": ("crop.nrrd", volume)}, timeout=120)


def _app(segmenter, tmp_path):
    return create_app(segmenter, ServerSettings(token=TOKEN, temp_dir=tmp_path / "server-tmp"))


def test_info_describes_the_model_as_every_front_end_does(segmenter, tmp_path):
    with LiveServer(_app(segmenter, tmp_path)) as server:
        info = httpx.get(f"{server.url}/v1/info", headers=auth(), timeout=30).json()
    description = describe_model(segmenter)
    assert (info["name"], info["api"], info["model"], info["model_version"]) == \
        ("tevia", 2, description.pop("name"), description.pop("version"))
    assert {key: info[key] for key in description} == description
    assert info["side_convention"] == "image" and info["image_size"] == [64, 64] and info["click_inputs"] is False


def test_a_gpu_out_of_memory_falls_back_to_the_cpu_like_the_worker(segmenter, small_nrrd, tmp_path):
    gpu = GpuOutOfMemory(segmenter)
    with LiveServer(_app(gpu, tmp_path)) as server:
        first = _post(server, small_nrrd)
        assert first.status_code == 200, first.text
        info = httpx.get(f"{server.url}/v1/info", headers=auth(), timeout=30).json()
        second = _post(server, small_nrrd)
    assert gpu.sizes[-1] == 1, "the GPU was tried down to one slice per batch"
    payload, labelmap = read_answer(first, tmp_path)
    assert FALLBACK in payload["warnings"]
    assert info["device"] == "cpu", "the server stays on the CPU"
    assert second.status_code == 200 and FALLBACK not in second.json()["warnings"]
    (tmp_path / "crop.nrrd").write_bytes(small_nrrd)
    expected = segment_volume(segmenter, sitk.ReadImage(str(tmp_path / "crop.nrrd")), ["liver"])
    assert np.array_equal(sitk.GetArrayFromImage(labelmap), sitk.GetArrayFromImage(expected.labelmap))


def test_out_of_memory_on_the_cpu_is_still_a_503(segmenter, small_nrrd, tmp_path):
    cpu = GpuOutOfMemory(segmenter)
    cpu.device = segmenter.device
    with LiveServer(_app(cpu, tmp_path)) as server:
        answer = _post(server, small_nrrd)
    assert answer.status_code == 503 and "ran out of memory" in answer.json()["detail"]
    assert "Retry-After" in answer.headers
