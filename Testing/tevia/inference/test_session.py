"""tevia.inference.session: the inference session behind the worker, the server and `tevia predict`.

Input reuse is tested in Testing/tevia/inference/test_volume_reuse.py; the front ends' use of the
fallback in Testing/tevia/serving/test_volume_worker.py and Testing/tevia/serving/server/test_server_session.py.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import TESTDATA, GpuOutOfMemory
from tevia.inference.segmenter import Segmenter
from tevia.inference.segment_options import SegmentOptions
from tevia.inference.session import InferenceSession, ModelLoadError, describe_model
from tevia.inference.pipeline import Cancelled, segment_volume
from tevia.serving.worker import Worker

torch.set_num_threads(1)

FALLBACK = "out of memory on cuda even with one slice per batch: falling back to the CPU (slower)"


@pytest.fixture(scope="module")
def segmenter(tiny_model_dir):
    return Segmenter.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    """A crop of the committed CT (24 slices), written where a session can read it."""
    image = sitk.ReadImage(str(TESTDATA / "volumes" / "totalseg-ct.nii.gz"))
    path = tmp_path_factory.mktemp("ct") / "ct.nrrd"
    sitk.WriteImage(image[::2, ::2, : min(24, image.GetSize()[2])], str(path))
    return path


def test_the_bundled_model_is_described_from_its_model_json():
    description = describe_model(Segmenter.load("default", device="cpu"))
    card = json.loads((TESTDATA.parents[1] / "TeViASegment" / "Resources" / "Models" / "default" / "model.json")
                      .read_text())
    assert (description["name"], description["version"]) == (card["name"], card["version"])
    assert description["vocabulary"] == card["vocabulary"] and description["example_prompts"] == card["example_prompts"]
    assert description["side_convention"] == card["side_convention"] and description["modality"] == card["modality"]
    assert description["domain"] == {"description": "2D frontal chest X-rays", "dimensionality": "2d",
                                     "dicom_modalities": ["CR", "DX"]}
    assert (description["device"], description["precision"]) == ("cpu", "fp32")
    assert description["click_inputs"] is card["config"]["click_inputs"] is True  # since 0.3.0
    assert description["image_size"] == card["config"]["image_size"]


def test_the_worker_load_answer_is_the_description(segmenter, tiny_model_dir):
    events = io.StringIO()
    Worker(events)._handle_load({"id": "l", "type": "load", "model": str(tiny_model_dir), "device": "cpu"})
    answer = json.loads(events.getvalue())
    assert answer["event"] == "result" and answer["model"] == str(tiny_model_dir) and answer["load_seconds"] > 0
    assert {key: answer[key] for key in describe_model(segmenter)} == describe_model(segmenter)


def test_a_model_that_cannot_load_says_whether_it_is_missing(tmp_path):
    session = InferenceSession()
    with pytest.raises(ModelLoadError, match="cannot load model 'no-such-model': unknown model") as unknown:
        session.load("no-such-model", "cpu")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="cannot load model") as corrupt:
        session.load(str(broken), "cpu")
    assert unknown.value.missing is True and corrupt.value.missing is False and session.segmenter is None
    with pytest.raises(ValueError, match="precision must be one of"):
        session.load("default", "cpu", "fp8")


def test_a_gpu_out_of_memory_falls_back_to_the_cpu_and_stays_there(segmenter, tiny_model_dir, ct):
    gpu = GpuOutOfMemory(segmenter)
    session = InferenceSession(segmenter=gpu)
    assert session.model == str(tiny_model_dir), "a given model is named by its folder"
    image = sitk.ReadImage(str(ct))
    warnings: list[str] = []
    result = session.segment(image, ["liver"], warn=warnings.append)
    assert warnings == [FALLBACK] and gpu.sizes[-1] == 1, "the GPU was tried down to one slice per batch"
    assert isinstance(session.segmenter, Segmenter) and session.segmenter.device.type == "cpu"
    expected = segment_volume(segmenter, image, ["liver"])
    assert np.array_equal(sitk.GetArrayFromImage(result.labelmap), sitk.GetArrayFromImage(expected.labelmap))
    warnings.clear()
    session.segment(image, ["spleen"], warn=warnings.append)
    assert warnings == [] and len(gpu.sizes) == 2, "the session stays on the CPU"


def test_out_of_memory_on_the_cpu_is_a_memory_error(segmenter, ct):
    cpu = GpuOutOfMemory(segmenter)
    cpu.device = segmenter.device
    with pytest.raises(MemoryError, match="out of memory with a batch of one slice"):
        InferenceSession(segmenter=cpu).segment(sitk.ReadImage(str(ct)), ["liver"])


def test_segment_file_writes_the_labelmap_and_its_sidecar_and_nothing_when_cancelled(segmenter, ct, tmp_path):
    session = InferenceSession(segmenter=segmenter, model="tiny")
    stages: list[str] = []
    done = session.segment_file(str(ct), ["liver"], tmp_path / "mask.nii.gz", SegmentOptions(threshold=0.4),
                                progress=lambda stage, *_: stages.append(stage), sidecar={"input": "ct.nrrd"})
    assert stages[0] == "read" and stages[-1] == "write" and "segment" in stages
    assert sitk.ReadImage(str(done.output)).GetSize() == sitk.ReadImage(str(ct)).GetSize()
    sidecar = json.loads((tmp_path / "mask.tevia.json").read_text())
    assert (sidecar["model"], sidecar["input"], sidecar["voxels"]) == ("tiny", "ct.nrrd", done.result.voxels)
    assert done.result.timings["total"] >= done.result.timings["read"] + done.result.timings["write"]
    with pytest.raises(Cancelled):
        session.segment_file(str(ct), ["spleen"], tmp_path / "other.nii.gz", SegmentOptions(), cancelled=lambda: True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz", "mask.tevia.json"]
