"""The worker against hostile requests and outputs: it never goes deaf and never overwrites an input.

A real worker process gets every kind of malformed line (each answered with ``bad_request``,
the worker serving on), then ends on ``shutdown`` or at the end of its input; segment requests
whose JSON sidecar would land on an input or on a file TeViA did not write.
"""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from tevia.volume.geometry import ijk_to_ras
from tevia.serving.worker import MAX_REQUEST_CHARS
from volume_fixtures import volumes_dir  # noqa: F401 (a pytest fixture)
from worker_process import WorkerProcess, worker  # noqa: F401 (worker: a pytest fixture)

_DEEP = 100_000
# (line, id of the error event, text of its message)
MALFORMED = [
    ("{not json", None, "malformed JSON"),
    ("[" * _DEEP + "]" * _DEEP, None, "malformed JSON"),
    ('{"id": "deep", "type": "ping", "x": ' + "[" * _DEEP + "]" * _DEEP + "}", None, "malformed JSON"),
    ('{"id": "digits", "type": "ping", "n": 1' + "0" * 5000 + "}", None, "malformed JSON"),
    ("[1, 2]", None, "JSON object"),
    ('"ping"', None, "JSON object"),
    ("null", None, "JSON object"),
    ('{"type": "ping"}', None, "'id'"),
    ('{"id": 5, "type": "ping"}', None, "'id'"),
    ('{"id": ["a"], "type": "ping"}', None, "'id'"),
    ('{"id": "unknown", "type": "explode"}', "unknown", "type must be one of"),
    ('{"id": "typelist", "type": ["ping"]}', "typelist", "type must be one of"),
    ('{"id": "c-list", "type": "cancel", "target": ["a", "b"]}', "c-list", "cancel needs 'target'"),
    ('{"id": "c-dict", "type": "cancel", "target": {"id": "a"}}', "c-dict", "cancel needs 'target'"),
    ('{"id": "c-none", "type": "cancel"}', "c-none", "cancel needs 'target'"),
    ('{"id": "s-input", "type": "segment", "input": ["/a.nii"], "prompts": ["x"], "output": "/o.nii.gz"}',
     "s-input", "segment needs 'input'"),
    ('{"id": "s-raw", "type": "segment", "input": {"npy": 1, "geometry": "/g.json"}, "prompts": ["x"], '
     '"output": "/o.nii.gz"}', "s-raw", "segment needs 'input'"),
    ('{"id": "s-prompts", "type": "segment", "input": "/a.nii", "prompts": [1], "output": "/o.nii.gz"}',
     "s-prompts", "list of strings"),
    ('{"id": "s-model", "type": "segment", "input": "/a.nii", "prompts": ["x"], "output": "/o.nii.gz", '
     '"model": {"a": 1}}', "s-model", "'model' must be a string"),
    ('{"id": "l-model", "type": "load", "model": [1]}', "l-model", "load needs 'model'"),
    ("x" * (2 * MAX_REQUEST_CHARS), None, "longer than"),
]


@pytest.mark.parametrize("ending", ["end of input", "shutdown"])
def test_every_malformed_line_is_answered_and_the_worker_serves_on(ending):
    process = WorkerProcess()
    try:
        for line, request_id, text in MALFORMED:
            process.send(line)
            event = process.next_event(timeout=30)
            assert event["event"] == "error" and event["code"] == "bad_request", (line[:80], event)
            assert event["id"] == request_id and text in event["message"], (line[:80], event)
            assert len(event["message"]) < 500
        assert process.request({"id": "still-here", "type": "ping"})[-1]["event"] == "result"
        if ending == "shutdown":
            assert process.request({"id": "bye", "type": "shutdown"})[-1]["shutdown"] is True
        else:
            process.process.stdin.close()
        assert process.process.wait(20) == 0
        assert process.non_protocol == []
    finally:
        process.close()


def _raw_input(folder, image) -> dict:
    np.save(folder / "v.npy", sitk.GetArrayFromImage(image))
    (folder / "v.json").write_text(json.dumps({"shape_kji": list(image.GetSize()[::-1]),
                                               "ijk_to_ras": ijk_to_ras(image).tolist()}))
    return {"npy": str(folder / "v.npy"), "geometry": str(folder / "v.json")}


def test_the_sidecar_of_v_nii_gz_leaves_the_raw_input_geometry_v_json_alone(worker, volumes_dir, tmp_path):
    source = _raw_input(tmp_path, sitk.ReadImage(str(volumes_dir / "spinalcord-t2.nii.gz")))
    geometry = (tmp_path / "v.json").read_bytes()
    result = worker.request({"id": "beside", "type": "segment", "input": source, "prompts": ["spinal cord"],
                             "output": str(tmp_path / "v.nii.gz")})[-1]
    assert result["event"] == "result", result
    assert (tmp_path / "v.json").read_bytes() == geometry
    assert json.loads((tmp_path / "v.tevia.json").read_text())["labels"] == {"1": "spinal cord"}


def test_a_sidecar_that_would_replace_an_input_or_a_foreign_file_is_refused(worker, volumes_dir, tmp_path):
    source = _raw_input(tmp_path, sitk.ReadImage(str(volumes_dir / "spinalcord-t2.nii.gz")))
    (tmp_path / "v.json").rename(tmp_path / "v.tevia.json")
    source["geometry"] = str(tmp_path / "v.tevia.json")
    (tmp_path / "m.tevia.json").write_text('{"notes": "mine"}')
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for output, text in (("v.nii.gz", "is the input file"), ("m.nrrd", "TeViA did not write it")):
        final = worker.request({"id": output, "type": "segment", "input": source, "prompts": ["spinal cord"],
                                "output": str(tmp_path / output)})[-1]
        assert final["event"] == "error" and final["code"] == "bad_input" and text in final["message"], final
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
