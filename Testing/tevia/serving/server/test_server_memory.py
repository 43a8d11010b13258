"""Memory under hostile uploads: the header and the memory budget are checked before any voxel is
decoded, a request is admitted to the queue before its volume is decoded, uploads in flight are
bounded, and nothing of a request stays in memory after its answer (issue 19, items 1 and 9)."""

from __future__ import annotations

import gc
import gzip
import socket
import struct
import threading
import time
import zlib

import httpx
import pytest
import SimpleITK as sitk

from server_helpers import (ResidentMemory, auth, multipart_body, occupy_worker, raw_request, segmenter,  # noqa: F401
                            serve, wait_until)

from tevia.inference.pipeline import SegmentResult

MB = 2**20


def _nifti_header(folder, size: tuple[int, int, int], pixel: int) -> bytes:
    """A NIfTI-1 header (352 bytes) made by ITK for a tiny image, then declaring `size`."""
    path = folder / "tiny.nii"
    sitk.WriteImage(sitk.Image([2, 2, 2], pixel), str(path))
    header = bytearray(path.read_bytes()[:352])
    struct.pack_into("<3h", header, 42, *size)
    return bytes(header)


def _zero_members(count: int) -> bytes:
    """`count` gzip members of 1 MiB of zeros each (about 1 KB each): one gzip stream of `count` MiB."""
    return gzip.compress(bytes(MB), compresslevel=9) * count


@pytest.fixture(scope="module")
def huge_headers(tmp_path_factory) -> dict[str, bytes]:
    """The three amplification probes of issue 19, each about 1-2 MB or less."""
    folder = tmp_path_factory.mktemp("huge")
    header = _nifti_header(folder, (512, 512, 1024), sitk.sitkFloat64)
    nrrd = (b"NRRD0004\ntype: float\ndimension: 4\nsizes: 32 512 512 128\nkinds: vector domain domain domain\n"
            b"encoding: gzip\nendian: little\n\n")
    return {
        "nifti-header-only": header + bytes(1000),                       # 1,352 bytes declaring 2 GiB
        "nifti-gzip-of-zeros": gzip.compress(header) + _zero_members(2048),  # ~2 MB declaring 2 GiB
        "nrrd-32-components": nrrd + _zero_members(1024),                 # ~1 MB, 32 float components
    }


@pytest.fixture(scope="module")
def zeros_ct(tmp_path_factory) -> bytes:
    """A valid .nii.gz of 512x512x512 int16 zeros: 256 MiB of voxels in 0.3 MB."""
    header = _nifti_header(tmp_path_factory.mktemp("zeros"), (512, 512, 512), sitk.sitkInt16)
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    body = compressor.compress(header)
    for _ in range(256):
        body += compressor.compress(bytes(MB))
    return body + compressor.flush()


def _post(server, volume: bytes, timeout: float = 120) -> httpx.Response:
    body, content_type = multipart_body([("volume", volume, "v.bin"), ("text", b"liver", None)])
    return httpx.post(f"{server.url}/v1/segment", content=body, timeout=timeout,
                      headers={**auth(), "Content-Type": content_type})


@pytest.mark.parametrize("probe", ["nifti-header-only", "nifti-gzip-of-zeros", "nrrd-32-components"])
def test_a_volume_over_the_memory_budget_is_refused_from_its_header(serve, huge_headers, probe):
    server = serve()
    began = time.monotonic()
    with ResidentMemory() as memory:
        answer = _post(server, huge_headers[probe])
    assert answer.status_code == 413, answer.text
    detail = answer.json()["detail"]
    assert "GiB" in detail and "component" in detail and "4.0 GiB per request" in detail
    assert time.monotonic() - began < 20
    assert memory.peak_growth < 150 * MB, memory.peak_growth / MB


def test_the_budget_counts_every_component_and_copy(serve, huge_headers):
    server = serve(memory_budget_bytes=2 * 1024**3)
    answer = _post(server, huge_headers["nrrd-32-components"])
    assert answer.status_code == 413
    assert "32 component(s) of 4 byte(s) per voxel, 1 copy while reading .nrrd" in answer.json()["detail"]
    nifti = _post(server, huge_headers["nifti-header-only"])
    assert "1 component(s) of 8 byte(s) per voxel, 2 copies while reading .nii" in nifti.json()["detail"]


def test_a_queued_or_refused_request_holds_no_decoded_volume(serve, zeros_ct):
    server = serve(queue_limit=1)
    queue = server.app.state.queue
    release = occupy_worker(server.app)
    queued: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: queued.append(_post(server, zeros_ct)))
    try:
        with ResidentMemory() as memory:
            thread.start()
            assert wait_until(lambda: queue.waiting == 1)
            refused = _post(server, zeros_ct)
        assert refused.status_code == 503 and "busy" in refused.json()["detail"]
        assert memory.peak_growth < 100 * MB, memory.peak_growth / MB  # decoded: 256 MiB, twice while reading
    finally:
        release.set()
        thread.join(120)
    assert queued[0].status_code == 200, queued[0].text


def test_uploads_beyond_the_bound_get_503_before_their_body_is_read(serve):
    server = serve(max_uploads=2)
    head = (f"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth()['Authorization']}\r\n"
            f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n")
    partial = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
    try:
        for sock in partial:
            sock.sendall(head.encode() + b"--x\r\n")
        assert wait_until(server.app.state.uploads.locked)
        began = time.monotonic()
        status, headers, body = raw_request(server.port, head, b"--x\r\n")
        assert status == 503 and b"receiving 2 uploads already" in body
        assert int(headers["retry-after"]) >= 1
        assert time.monotonic() - began < 5
    finally:
        for sock in partial:
            sock.close()
    assert wait_until(lambda: not server.app.state.uploads.locked())
    assert _post(server, b"not a volume").status_code == 422


def test_the_last_request_leaves_no_volume_or_labelmap_in_memory(serve, zeros_ct):
    server = serve()
    with ResidentMemory() as memory:
        answer = _post(server, zeros_ct)
        assert wait_until(lambda: not server.app.state.queue.busy)
        gc.collect()
        after = ResidentMemory.now()
    assert answer.status_code == 200, answer.text
    del answer
    assert memory.peak_growth > 250 * MB  # the volume was decoded (256 MiB of voxels) ...
    assert after - memory.start < 60 * MB, (after - memory.start) / MB  # ... and released with its labelmap
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, SegmentResult)]
    assert not [o for o in gc.get_objects() if isinstance(o, sitk.Image) and o.GetSize() == (512, 512, 512)]
