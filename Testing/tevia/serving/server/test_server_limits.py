"""Upload limit (413), validation (422), queue limit (503), timeout (504), temporary files."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from server_helpers import (auth, module_server, multipart_body, occupy_worker, raw_request,  # noqa: F401
                            segmenter, serve, small_nrrd, wait_until)


def _post(server, fields, headers=None, timeout=60) -> httpx.Response:
    body, content_type = multipart_body(fields)
    return httpx.post(f"{server.url}/v1/segment", content=body, timeout=timeout,
                      headers={**auth(), "Content-Type": content_type, **(headers or {})})


def test_declared_oversized_upload_is_refused_with_413_before_reading(module_server):
    head = (f"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth()['Authorization']}\r\n"
            f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {9 * 2**20}\r\n"
            f"Connection: close\r\n\r\n")
    status, _, body = raw_request(module_server.port, head)
    assert status == 413
    assert b"8 MB" in body


def test_streamed_oversized_upload_is_cut_at_the_limit_with_413(serve):
    server = serve(max_upload_bytes=2**20)
    body, content_type = multipart_body([("text", b"liver", None), ("volume", bytes(3 * 2**20), "v.nrrd")])

    def chunked():
        for start in range(0, len(body), 65536):
            yield body[start:start + 65536]

    answer = httpx.post(f"{server.url}/v1/segment", content=chunked(), timeout=60,
                        headers={**auth(), "Content-Type": content_type})
    assert "content-length" not in answer.request.headers
    assert answer.status_code == 413
    assert "limit of 1 MB" in answer.json()["detail"]


@pytest.mark.parametrize("fields, message", [
    ([("text", b"liver", None)], "no `volume` file"),
    ([("volume", b"NRRD0004\n", "v.nrrd")], "no `text` field"),
    ([("volume", b"x", "v.nrrd"), ("text", b"   ", None)], "`text` field 1 is empty"),
    ([("volume", b"x", "v.nrrd"), ("text", b"a" * 300, None)], "the limit is 256"),
    ([("volume", b"x", "v.nrrd"), ("text", b"liver", None), ("options", b"{threshold: 0.5", None)],
     "not valid JSON"),
    ([("volume", b"x", "v.nrrd"), ("text", b"liver", None), ("options", b"[0.5]", None)], "must be a JSON object"),
    ([("volume", b"x", "v.nrrd"), ("text", b"liver", None), ("options", b'{"treshold": 0.5}', None)],
     "unknown option(s) treshold"),
    ([("volume", b"x", "v.nrrd"), ("text", b"liver", None), ("options", b'{"threshold": 2}', None)],
     "threshold must be a number between 0 and 1"),
    ([("volume", b"x", "v.nrrd"), ("text", b"liver", None), ("options", b"[" * 30000 + b"]" * 30000, None)],
     "nests too deeply"),
    ([("volume", b"x", "v.nrrd"), ("text", b"liver", None), ("options", b'{"window": [[[40]], 400]}', None)],
     "'window' must be a number, text, true/false or a list of at most 16 numbers, got a nested list"),
    ([("volume", b"x", "v.nrrd"), ("text", b"liver", None), ("options", b'{"slice_axis": {"axial": 1}}', None)],
     "got a nested dict"),
    ([("volume", b"x", "v.nrrd"), ("text", b"liver", None), ("options", b'{"min_size": 1e400}', None)],
     "min_size must be an integer from 0 to 2147483647, got inf"),
    ([("volume", b"x", "v.nrrd"), ("text", b"liver", None), ("options", b'{"min_size": 1000000000000000000000000000000}', None)],
     "min_size must be an integer from 0 to 2147483647, got 1000000000000000000000000000000"),
    ([("volume", b"x", "v.nrrd"), ("text", b"liver", None), ("options", b'{"batch_size": 1000000000}', None)],
     "batch_size must be an integer from 1 to 4096"),
    ([("volume", b"x", "v.nrrd"), ("text", b"liver", None), ("options", b'{"convention": ["patient"]}', None)],
     "convention must be 'patient' or 'image', got ['patient']"),
    ([("volume", b"\x89PNG\r\n\x1a\n" + bytes(100), "v.png"), ("text", b"liver", None)],
     "not a NRRD (.nrrd) or NIfTI"),
    ([("volume", b"NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n"
                 b"data file: /etc/passwd\n\n", "v.nhdr"), ("text", b"liver", None)], "separate data file"),
    ([("volume", b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4000 4000 4000\nencoding: raw\nendian: little\n\n", "v.nrrd"),
      ("text", b"liver", None)], "this server accepts at most"),
    ([("volume", b"NRRD0004\ntype: short\ndimension: 3\nsizes: 20 20 20\nencoding: raw\nendian: little\n\n" + bytes(10), "v.nrrd"),
      ("text", b"liver", None)], "is truncated: its header declares 16,000 bytes"),
    ([("volume", b"x", "v.nrrd"), ("volume", b"y", "w.nrrd"), ("text", b"liver", None)], "more than one `volume`"),
    ([("volume", b"x", "v.nrrd"), ("path", b"/etc/passwd", None)], "unknown form field 'path'"),
    ([("volume", b"x", "v.nrrd")] + [("text", f"p{i}".encode(), None) for i in range(17)], "more than 16 `text`"),
])
def test_malformed_requests_get_422_with_a_clear_message(module_server, fields, message):
    answer = _post(module_server, fields)
    assert answer.status_code == 422, answer.text
    assert message in answer.json()["detail"]


def test_a_body_that_is_not_multipart_gets_422(module_server):
    answer = httpx.post(f"{module_server.url}/v1/segment", json={"volume": "/data/ct.nii.gz", "text": "liver"},
                        headers=auth())
    assert answer.status_code == 422
    assert "multipart/form-data" in answer.json()["detail"]


def test_queue_limit_answers_503_with_retry_after(serve, small_nrrd):
    server = serve(queue_limit=1)
    queue = server.app.state.queue
    release = occupy_worker(server.app)
    fields = [("volume", small_nrrd, "v.nrrd"), ("text", b"spleen", None)]
    queued: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: queued.append(_post(server, fields)))
    try:
        thread.start()
        assert wait_until(lambda: queue.waiting == 1)
        refused = _post(server, fields)
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        assert "busy" in refused.json()["detail"]
    finally:
        release.set()
        thread.join(60)
    assert queued[0].status_code == 200


def test_request_timeout_answers_504_and_drops_the_waiting_job(serve, small_nrrd):
    server = serve(request_timeout=1.0)
    release = occupy_worker(server.app)
    try:
        began = time.monotonic()
        answer = _post(server, [("volume", small_nrrd, "v.nrrd"), ("text", b"spleen", None)])
        assert answer.status_code == 504
        assert "request timeout" in answer.json()["detail"]
        assert 0.9 < time.monotonic() - began < 10
        assert server.app.state.queue.waiting == 0
    finally:
        release.set()


def test_a_client_that_disconnects_while_queued_loses_its_place(serve, small_nrrd):
    server = serve(queue_limit=2)
    queue = server.app.state.queue
    release = occupy_worker(server.app)
    body, content_type = multipart_body([("volume", small_nrrd, "v.nrrd"), ("text", b"spleen", None)])
    head = (f"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth()['Authorization']}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n")
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(head.encode() + body)
            assert wait_until(lambda: queue.waiting == 1)
        assert wait_until(lambda: queue.waiting == 0)
    finally:
        release.set()


def test_uploads_stay_inside_the_server_temp_folder_and_are_removed(serve, small_nrrd, tmp_path):
    server = serve()
    temp_root = Path(server.app.state.temp_root)
    assert temp_root == tmp_path / "server-tmp"
    escape = "../../../escaped.nrrd"
    ok = _post(server, [("volume", small_nrrd, escape), ("text", b"spleen", None)])
    bad = _post(server, [("volume", b"not a volume", escape), ("text", b"spleen", None)])
    assert (ok.status_code, bad.status_code) == (200, 422)
    assert not list(tmp_path.rglob("escaped*")) and not list(Path("/tmp").glob("escaped*"))
    assert list(temp_root.iterdir()) == []


def test_a_repeated_prompt_is_refused_by_the_pipeline_with_422(module_server, small_nrrd):
    answer = _post(module_server, [("volume", small_nrrd, "v.nrrd"), ("text", b"liver", None), ("text", b"liver", None)])
    assert answer.status_code == 422
    assert "repeats an earlier prompt" in answer.json()["detail"]


def test_a_volume_beyond_the_free_memory_gets_413_before_its_voxels_are_read(serve):
    server = serve(max_voxels=10**15)
    header = b"NRRD0004\ntype: short\ndimension: 3\nsizes: 100000 100000 1000\nencoding: raw\nendian: little\n\n"
    answer = _post(server, [("volume", header, "v.nrrd"), ("text", b"liver", None)])
    assert answer.status_code == 413
    assert "crop or downsample" in answer.json()["detail"]


def test_an_upload_that_stalls_gets_408_at_the_request_timeout(serve):
    server = serve(request_timeout=1.0)
    head = (f"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth()['Authorization']}\r\n"
            f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n")
    began = time.monotonic()
    status, _, body = raw_request(server.port, head, b"--x\r\n")
    assert status == 408 and b"upload did not finish" in body
    assert time.monotonic() - began < 10
    assert list(server.app.state.temp_root.iterdir()) == []
