"""The worker as a real subprocess speaking JSON lines: load, segment, cache, cancel, every bad input."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO
from tevia.volume.geometry import ijk_to_ras, same_geometry
from volume_fixtures import ct_path, volumes_dir  # noqa: F401 (pytest fixtures)
from worker_process import WorkerProcess, worker  # noqa: F401 (a pytest fixture)


def _alive(worker):
    assert worker.request({"id": "ping", "type": "ping"})[-1]["event"] == "result"


def test_ready_and_load(worker):
    assert worker.ready["event"] == "ready" and worker.ready["protocol"] == 1 and worker.ready["id"] is None
    ping = worker.request({"id": "p0", "type": "ping"})[-1]
    assert ping["device"] == "cpu" and ping["model"]


def test_segment_then_second_prompt_hits_the_cache(worker, ct_path, tmp_path):
    settled = time.time() - max(ct_path.stat().st_mtime, ct_path.stat().st_ctime) > 2  # not just checked out
    first = worker.request({"id": "s1", "type": "segment", "input": str(ct_path), "prompts": ["liver", "spleen"],
                            "output": str(tmp_path / "a.nii.gz"), "options": {"threshold": 0.4649}})
    result = first[-1]
    assert result["event"] == "result", first
    assert [e["stage"] for e in first if e["event"] == "progress"][:2] == ["read", "segment"]
    assert result["labels"] == {"1": "liver", "2": "spleen"} and result["cache_hit"] is False
    labelmap = sitk.ReadImage(result["output"])
    assert same_geometry(labelmap, sitk.ReadImage(str(ct_path)))
    counts = np.bincount(sitk.GetArrayViewFromImage(labelmap).ravel(), minlength=3)
    assert result["voxels"] == {"liver": counts[1], "spleen": counts[2]}
    sidecar = json.loads((tmp_path / "a.tevia.json").read_text())
    assert sidecar["labels"] == result["labels"] and sidecar["convention"] == "patient"
    second = worker.request({"id": "s2", "type": "segment", "input": str(ct_path), "prompts": ["kidney"],
                             "output": str(tmp_path / "b.nii.gz"), "options": {"threshold": 0.4649}})[-1]
    assert second["cache_hit"] is True and second["timings"]["encode_images"] == 0.0
    assert result["timings"]["encode_images"] > 0
    assert second["timings"]["total"] < result["timings"]["total"]
    assert result["input_reused"] is False
    if settled:  # the same unchanged file: not read again
        assert second["input_reused"] is True
    for timings in (result["timings"], second["timings"]):
        assert timings["write"] > 0 and timings["total"] >= timings["read"] + timings["decode"] + timings["write"]


def test_raw_voxels_in_npy_out(worker, volumes_dir, tmp_path):
    """Slicer's exchange: KJI voxels + IJK-to-RAS in, a KJI uint8 .npy out."""
    image = sitk.ReadImage(str(volumes_dir / "spinalcord-t2.nii.gz"))
    np.save(tmp_path / "v.npy", sitk.GetArrayFromImage(image))
    (tmp_path / "g.json").write_text(json.dumps({"shape_kji": list(image.GetSize()[::-1]),
                                                 "ijk_to_ras": ijk_to_ras(image).tolist()}))
    result = worker.request({"id": "raw", "type": "segment", "prompts": ["spinal cord"],
                             "input": {"npy": str(tmp_path / "v.npy"), "geometry": str(tmp_path / "g.json")},
                             "output": str(tmp_path / "m.npy")})[-1]
    mask = np.load(result["output"])
    assert mask.dtype == np.uint8 and mask.shape == image.GetSize()[::-1]
    assert "crop_origin" not in result


@pytest.mark.parametrize("threshold", [0.4649, 0.999])
def test_a_cropped_npy_holds_the_block_of_the_labelled_voxels(worker, ct_path, tmp_path, threshold):
    """What the Slicer module asks for: only the block that holds the labels, and where it starts."""
    request = {"type": "segment", "input": str(ct_path), "prompts": ["liver", "spleen"],
               "options": {"threshold": threshold}}
    whole = np.load(worker.request({**request, "id": "whole", "output": str(tmp_path / "w.npy")})[-1]["output"])
    cropped = worker.request({**request, "id": "crop", "crop": True, "output": str(tmp_path / "c.npy")})[-1]
    block, (k, j, i) = np.load(cropped["output"]), cropped["crop_origin"]
    assert json.loads((tmp_path / "c.tevia.json").read_text())["crop_origin"] == [k, j, i]
    padded = np.zeros_like(whole)
    padded[k:k + block.shape[0], j:j + block.shape[1], i:i + block.shape[2]] = block
    np.testing.assert_array_equal(padded, whole)
    if whole.any():
        assert all(block[[0, -1]].any(axis=(1, 2)))  # tight: every face of the block holds a label
        assert block[:, [0, -1]].any() and block[..., [0, -1]].any()
    else:
        assert block.shape == (1, 1, 1) and [k, j, i] == [0, 0, 0]


def test_seg_nrrd_output(worker, ct_path, tmp_path):
    import slicerio

    result = worker.request({"id": "seg", "type": "segment", "input": str(ct_path), "prompts": ["liver", "spleen"],
                             "output": str(tmp_path / "m.seg.nrrd")})[-1]
    segmentation = slicerio.read_segmentation(result["output"])
    assert [s["name"] for s in segmentation["segments"]] == ["liver", "spleen"]


def test_cancel_in_the_middle_of_a_volume(worker, ct_path, tmp_path):
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_path)))
    np.save(tmp_path / "long.npy", np.concatenate([ct] * 20))  # the real CT repeated: 600 slices
    (tmp_path / "long.json").write_text(json.dumps({"ijk_to_ras": np.diag([-1.0, -1, 1, 1]).tolist()}))
    out = tmp_path / "never.nii.gz"
    worker.send({"id": "long", "type": "segment", "prompts": ["liver"], "output": str(out),
                 "input": {"npy": str(tmp_path / "long.npy"), "geometry": str(tmp_path / "long.json")}})
    while True:
        event = worker.next_event()
        if event["id"] == "long" and event["event"] == "progress" and event["stage"] == "segment" and event["done"] > 0:
            break
    sent = time.monotonic()
    worker.send({"id": "stop", "type": "cancel", "target": "long"})
    events = worker.until_done("long")
    assert events[-1]["event"] == "cancelled" and time.monotonic() - sent < 1.0
    assert max(e.get("done", 0) for e in events) < 600
    assert list(tmp_path.glob("never*")) == []
    _alive(worker)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, ct_path):
    folder = tmp_path_factory.mktemp("bad")
    ct = sitk.ReadImage(str(ct_path))
    (folder / "truncated.nii.gz").write_bytes(ct_path.read_bytes()[:3000])
    sitk.WriteImage(ct, str(folder / "short.nii"))
    (folder / "short.nii").write_bytes((folder / "short.nii").read_bytes()[:-4096])
    (folder / "notes.txt").write_text("not an image")
    sitk.WriteImage(sitk.JoinSeries([ct, ct]), str(folder / "four_d.nii.gz"))
    sitk.WriteImage(sitk.Compose(ct, ct), str(folder / "vector.nrrd"))
    values = sitk.GetArrayFromImage(ct).astype(np.float32)
    values[0, 0, :3] = [np.nan, np.inf, -np.inf]
    raw = {"nan": values, "constant": np.full((3, 8, 8), 5, np.int16), "one": np.ones((1, 1, 1), np.int16)}
    for name, array in raw.items():
        np.save(folder / f"{name}.npy", array)
    (folder / "eye.json").write_text(json.dumps({"ijk_to_ras": np.eye(4).tolist()}))
    (folder / "huge.raw").write_bytes(b"\0" * 8)
    (folder / "huge.nhdr").write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 10000 10000 10000\n"
                                      "encoding: raw\nendian: little\ndata file: huge.raw\n")
    return folder


def _raw(folder, name):
    return {"npy": str(folder / f"{name}.npy"), "geometry": str(folder / "eye.json")}


# (case, input, prompts, expected final event/code, text expected in the error message, or for a
# result a text expected in each warning, in order: the result has exactly these warnings)
BAD = [
    ("missing", "missing.nii.gz", ["liver"], "not_found", "not found"),
    ("cut-gzip", "truncated.nii.gz", ["liver"], "bad_input", "truncated"),
    ("short-nii", "short.nii", ["liver"], "bad_input", "but it holds only"),
    ("unsupported", "notes.txt", ["liver"], "unsupported_format", "not supported"),
    ("4d", "four_d.nii.gz", ["liver"], "bad_input", "4D"),
    ("multi-component", "vector.nrrd", ["liver"], "result", ("first",)),
    ("empty-text", "vector.nrrd", [""], "bad_input", "empty"),
    ("whitespace-text", "vector.nrrd", [" \t "], "bad_input", "empty"),
    ("long-text", "vector.nrrd", ["lower left lung " * 40], "result", ("first", "words")),
    ("non-ascii", "vector.nrrd", ["Lésion pulmonaire – poumon gauche ✓"], "result", ("first",)),
    ("nan-inf", "nan", ["liver"], "result", ("NaN",)),
    ("constant", "constant", ["liver"], "result", ("constant",)),
    ("one-voxel", "one", ["liver"], "result", ("constant",)),
    ("too-large", "huge.nhdr", ["liver"], "out_of_memory", "crop or downsample"),
]


@pytest.mark.parametrize("case,source,prompts,expected,text", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs(worker, bad_files, tmp_path, case, source, prompts, expected, text):
    source = _raw(bad_files, source) if source in ("nan", "constant", "one") else str(bad_files / source)
    events = worker.request({"id": case, "type": "segment", "input": source, "prompts": prompts,
                             "output": str(tmp_path / "out.nrrd")})
    final = events[-1]
    if expected == "result":
        assert final["event"] == "result", final
        assert final["labels"] == {"1": prompts[0]}
        warnings = [e["message"] for e in events if e["event"] == "warning"]
        assert warnings == final["warnings"]
        assert len(warnings) == len(text) and all(part in w for part, w in zip(text, warnings)), warnings
        assert (tmp_path / "out.nrrd").is_file()
    else:
        assert final["event"] == "error" and final["code"] == expected and text in final["message"], final
        assert not (tmp_path / "out.nrrd").exists()
    _alive(worker)


@pytest.mark.parametrize("line,match", [
    ("{not json", "malformed JSON"),
    ("[1, 2]", "JSON object"),
    ('{"type": "ping"}', "'id'"),
    ('{"id": "u", "type": "explode"}', "type must be one of"),
])
def test_malformed_requests(worker, line, match):
    worker.send(line)
    event = worker.next_event()
    assert event["event"] == "error" and event["code"] == "bad_request" and match in event["message"]
    _alive(worker)


@pytest.mark.parametrize("request_fields,code,match", [
    ({"type": "segment", "prompts": ["liver"], "output": "OUT/x.nii.gz"}, "bad_request", "needs 'input'"),
    ({"type": "segment", "input": "CT", "prompts": ["liver"], "output": "x.nii.gz"}, "bad_request", "absolute"),
    ({"type": "segment", "input": "CT", "prompts": "liver", "output": "OUT/x.nii.gz"}, "bad_request", "list"),
    ({"type": "segment", "input": "CT", "prompts": ["liver"], "output": "/no/such/folder/x.nii.gz"}, "not_found",
     "does not exist"),
    ({"type": "segment", "input": "CT", "prompts": ["liver"], "output": "OUT/x.txt"}, "unsupported_format",
     "cannot write"),
    ({"type": "segment", "input": "CT", "prompts": ["liver"], "output": "OUT/x.nii.gz", "options": {"colour": 1}},
     "bad_request", "colour"),
    ({"type": "segment", "input": "CT", "prompts": ["liver"], "output": "OUT/x.nii.gz", "crop": True},
     "bad_request", "'crop'"),
    ({"type": "segment", "input": "CT", "prompts": ["liver"], "output": "OUT/x.npy", "crop": "yes"},
     "bad_request", "'crop'"),
    ({"type": "load", "model": "no-such-model"}, "not_found", "no-such-model"),
    ({"type": "load", "model": "default", "device": "quantum"}, "bad_request", "quantum"),
    ({"type": "load", "model": "default", "device": "cpu", "precision": "fp8"}, "bad_request", "fp8"),
    ({"type": "cancel", "target": "nothing-running"}, "not_found", "nothing-running"),
])
def test_request_errors(worker, ct_path, tmp_path, request_fields, code, match):
    request = {"id": "bad", **request_fields}
    if request.get("input") == "CT":
        request["input"] = str(ct_path)
    if "output" in request:
        request["output"] = request["output"].replace("OUT", str(tmp_path))
    final = worker.request(request)[-1]
    assert final["event"] == "error" and final["code"] == code and match in final["message"], final
    assert list(tmp_path.iterdir()) == []
    assert worker.request({"id": "after", "type": "ping"})[-1]["model"] != "no-such-model"


def test_shutdown():
    process = WorkerProcess()
    try:
        assert process.request({"id": "bye", "type": "shutdown"})[-1] == {"id": "bye", "event": "result", "shutdown": True}
        assert process.process.wait(20) == 0
    finally:
        process.close()


def test_corrupt_model_is_a_model_error(worker, tiny_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100] + b"\0" * 100)
    final = worker.request({"id": "corrupt", "type": "load", "model": str(broken), "device": "cpu"})[-1]
    assert final["event"] == "error" and final["code"] == "model_error", final
    assert worker.request({"id": "still", "type": "ping"})[-1]["model"] == str(tiny_model_dir)


def test_bf16_precision_loads_segments_and_reverts(worker, tiny_model_dir, ct_path, tmp_path):
    def segment(name):
        request = {"id": name, "type": "segment", "input": str(ct_path), "prompts": ["liver"],
                   "output": str(tmp_path / f"{name}.nii.gz"), "options": {"threshold": 0.4649}}
        assert worker.request(request)[-1]["event"] == "result"
        return sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{name}.nii.gz")))

    fp32 = segment("fp32")
    loaded = worker.request({"id": "bf", "type": "load", "model": str(tiny_model_dir), "device": "cpu",
                             "precision": "bf16"})[-1]
    try:
        assert loaded["event"] == "result" and loaded["precision"] == "bf16", loaded
        bf16 = segment("bf16")
    finally:
        back = worker.request({"id": "fp", "type": "load", "model": str(tiny_model_dir), "device": "cpu"})[-1]
    assert back["precision"] == "fp32"
    # closeness to fp32 is tested on probabilities (Testing/tevia/inference/test_precision.py): this random
    # model's probabilities all sit near the threshold, so labels are no measure here
    assert bf16.shape == fp32.shape and bf16.max() == 1


def test_a_gpu_out_of_memory_falls_back_to_the_cpu(tiny_model_dir, ct_path, tmp_path):
    """Even one slice per batch does not fit the GPU: the worker warns, reloads the model on the CPU,
    answers the request from there and stays there. No GPU here: the real model in a worker of
    this process, whose device says cuda and whose encoder raises CUDA's out-of-memory."""
    import io

    from conftest import GpuOutOfMemory
    from tevia.serving.worker import Worker

    events = io.StringIO()
    worker = Worker(events)
    worker.session.load(str(tiny_model_dir), "cpu")
    cpu = worker.session.segmenter
    gpu = worker.session.segmenter = GpuOutOfMemory(cpu)
    request = {"id": "s", "type": "segment", "input": str(ct_path), "prompts": ["liver"],
               "output": str(tmp_path / "m.nii.gz"), "options": {"threshold": 0.4649}}
    worker._handle_segment(request)
    worker._handle_ping({"id": "p", "type": "ping"})
    seen = [json.loads(line) for line in events.getvalue().splitlines()]
    warnings = [e["message"] for e in seen if e["event"] == "warning"]
    assert "out of memory on cuda even with one slice per batch: falling back to the CPU (slower)" in warnings
    assert gpu.sizes[-1] == 1, "the GPU was tried down to one slice per batch"
    result, ping = [e for e in seen if e["event"] == "result"]
    assert result["id"] == "s" and ping["device"] == "cpu"
    request.update(id="s2", output=str(tmp_path / "cpu.nii.gz"))
    worker.session.segmenter = cpu
    worker._handle_segment(request)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "m.nii.gz"))),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cpu.nii.gz"))))


_CLI_HELP = "from tevia.commands import cli\ntry:\n    cli.main(['{}', '--help'])\nexcept SystemExit:\n    pass"


@pytest.mark.parametrize("code, given, expected", [
    ("import tevia.serving.worker", None, "2000"), ("import tevia.serving.worker", "77", "77"),
    (_CLI_HELP.format("serve"), None, "2000"), (_CLI_HELP.format("predict"), "77", "77"),
    (_CLI_HELP.format("train"), None, "2000"), (_CLI_HELP.format("evaluate"), None, "2000"),
])
def test_processes_limit_openmp_spinning_unless_the_user_set_it(code, given, expected):
    """GOMP_SPINCOUNT is set before torch loads in the worker and every `tevia` command
    (bench/bench_contention.py: a busy neighbour made a second prompt 40x slower with libgomp's
    default; a training beside other work slowed 7x); a value the user chose is kept."""
    env = {key: value for key, value in os.environ.items() if key != "GOMP_SPINCOUNT"}
    env["PYTHONPATH"] = str(REPO / "TeViASegment")
    if given:
        env["GOMP_SPINCOUNT"] = given
    probe = code + "\nimport os, sys\nprint(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split()[-2:] == [expected, "True"]


def test_spinning_is_left_alone_once_torch_is_loaded():
    env = {key: value for key, value in os.environ.items() if key != "GOMP_SPINCOUNT"}
    env["PYTHONPATH"] = str(REPO / "TeViASegment")
    probe = ("import os, torch\nfrom tevia.openmp import limit_spinning\n"
             "print(limit_spinning(), os.environ.get('GOMP_SPINCOUNT'))")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "None"]
