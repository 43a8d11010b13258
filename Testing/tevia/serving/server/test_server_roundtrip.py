"""POST /v1/segment round trips on real volumes: geometry, the JSON answer, feature cache, logs."""

from __future__ import annotations

import json
import logging

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from server_helpers import (TOKEN, auth, cropped_volume, module_server, read_answer,  # noqa: F401 (fixtures)
                            real_volume, same_geometry, segmenter)


def _segment(server, path, prompts, options=None, filename="volume.bin") -> httpx.Response:
    data = {"text": prompts}
    if options is not None:
        data["options"] = json.dumps(options)
    with open(path, "rb") as file:
        return httpx.post(f"{server.url}/v1/segment", headers=auth(), data=data,
                          files={"volume": (filename, file)}, timeout=120)


@pytest.mark.parametrize("name, suffix", [("totalseg-ct.nii.gz", ".nii.gz"), ("spinalcord-t2.nii.gz", ".nrrd")])
def test_round_trip_keeps_geometry_and_answers_every_prompt(module_server, tmp_path, name, suffix):
    source = cropped_volume(name)
    upload = tmp_path / f"upload{suffix}"
    sitk.WriteImage(source, str(upload), useCompression=True)
    options = {"threshold": 0.3, "slice_axis": "axial"}
    answer = _segment(module_server, upload, ["liver", "spleen"], options)
    assert answer.status_code == 200, answer.text
    header, labelmap = read_answer(answer, tmp_path)
    assert same_geometry(labelmap, source)
    assert labelmap.GetPixelID() == sitk.sitkUInt8
    assert header["labels"] == {"1": "liver", "2": "spleen"}
    assert [p["original"] for p in header["prompts"]] == ["liver", "spleen"]
    voxels = np.bincount(sitk.GetArrayViewFromImage(labelmap).ravel(), minlength=3)
    assert header["voxels"] == {"liver": int(voxels[1]), "spleen": int(voxels[2])}
    assert len(voxels) == 3 and voxels[1] > 0 and voxels[2] > 0


def test_a_second_prompt_on_the_same_volume_reuses_the_cached_features(module_server, tmp_path):
    path = tmp_path / "crop.nrrd"
    sitk.WriteImage(cropped_volume("totalseg-ct.nii.gz"), str(path))
    first = _segment(module_server, path, ["kidney"], {"slice_axis": "coronal"})
    second = _segment(module_server, path, ["left kidney"], {"slice_axis": "coronal"})
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json()["timings"]["cache_hit"] == 0.0
    assert second.json()["timings"]["cache_hit"] == 1.0


def test_the_label_map_travels_in_the_body_and_the_headers_stay_small(module_server, tmp_path):
    prompts = [f"{organ}の病変、{side}に二か所" for organ in ("肝臓", "脾臓", "左腎", "右腎") for side in ("前方", "後方")]
    answer = _segment(module_server, real_volume("totalseg-ct.nii.gz"), prompts)
    assert answer.status_code == 200, answer.text
    payload, labelmap = read_answer(answer, tmp_path)
    assert payload["labels"] == {str(i + 1): p for i, p in enumerate(prompts)}
    assert [p["original"] for p in payload["prompts"]] == prompts
    assert sum(len(k) + len(v) for k, v in answer.headers.items()) < 300
    assert labelmap.GetSize() == (122, 101, 30)


def test_logs_hold_no_token_no_prompt_and_no_voxels(module_server, caplog):
    caplog.set_level(logging.DEBUG)
    answer = _segment(module_server, real_volume("totalseg-ct.nii.gz"), ["secret-prompt-words"])
    assert answer.status_code == 200
    server_records = [r for r in caplog.records if r.name.startswith(("tevia", "uvicorn", "fastapi"))]
    text = "\n".join(f"{r.name}: {r.getMessage()}" for r in server_records)
    assert "segmented a 122x101x30 volume" in text
    assert TOKEN not in text and "secret-prompt-words" not in text
    assert len(text) < 2000
