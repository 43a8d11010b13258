"""TeViASegmentLib.remote_client.RemoteClient against real servers on 127.0.0.1."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk

from server_helpers import (TOKEN, certificate, cropped_volume, module_server, occupy_worker, real_volume, segmenter,  # noqa: F401
                            serve, wait_until)

from TeViASegmentLib.remote_client import RemoteCancelled, RemoteClient, RemoteError
from tevia.inference.pipeline import SegmentOptions, segment_volume


# batch_size 1: the pipeline sizes batches by time, and batch composition moves probabilities by
# ~1e-7, enough to flip a tie between two labels; one slice per batch makes runs comparable.
OPTIONS = {"threshold": 0.3, "batch_size": 1}


def kji_and_ijk_to_ras(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """What Slicer hands over: arrayFromVolume (K, J, I) and the IJK-to-RAS matrix."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction * np.array(image.GetSpacing())
    ijk_to_lps[:3, 3] = image.GetOrigin()
    return sitk.GetArrayFromImage(image), np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps


@pytest.fixture(scope="module")
def small_volume() -> tuple[np.ndarray, np.ndarray]:
    image = sitk.ReadImage(str(real_volume("totalseg-ct.nii.gz")))[40:80, 30:70, 10:16]
    return kji_and_ijk_to_ras(image)


@pytest.mark.parametrize("name", ["totalseg-ct.nii.gz", "spinalcord-t2.nii.gz"])
def test_round_trip_gives_the_local_pipeline_result_in_kji(module_server, segmenter, name):
    source = cropped_volume(name)
    volume_kji, ijk_to_ras = kji_and_ijk_to_ras(source)
    client = RemoteClient(module_server.url, TOKEN, timeout=120)
    assert client.health()["status"] == "ok"
    assert client.info()["model"] == "tiny-test"
    labelmap, labels, warnings = client.segment(volume_kji, ijk_to_ras, ["liver", "spleen"], OPTIONS)
    assert labelmap.shape == volume_kji.shape and labelmap.dtype == np.uint8
    assert labels == {1: "liver", 2: "spleen"}
    assert isinstance(warnings, list)
    local = segment_volume(segmenter, source, ["liver", "spleen"], SegmentOptions.from_dict(OPTIONS))
    np.testing.assert_array_equal(labelmap, sitk.GetArrayViewFromImage(local.labelmap))
    assert {1, 2} <= set(np.unique(labelmap).tolist())
    for axis in range(3):  # the comparison would see a flipped axis
        assert not np.array_equal(labelmap, np.flip(labelmap, axis))


def test_token_errors_say_what_to_do(module_server, small_volume):
    with pytest.raises(RemoteError, match="refused the token"):
        RemoteClient(module_server.url, "wrong-token-0123456789abcdef").info()
    with pytest.raises(RemoteError, match="requires a token"):
        RemoteClient(module_server.url).segment(*small_volume, ["liver"], {})


def test_connection_refused_is_explained():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RemoteError, match="connection refused"):
        RemoteClient(f"http://127.0.0.1:{port}", TOKEN).health()


def test_server_side_validation_reaches_the_user(module_server, small_volume):
    with pytest.raises(RemoteError, match=r"\(422\).*treshold"):
        RemoteClient(module_server.url, TOKEN).segment(*small_volume, ["liver"], {"treshold": 0.5})


def test_too_large_volume_is_refused_before_the_upload(serve, small_volume):
    server = serve(max_upload_bytes=4096)
    with pytest.raises(RemoteError, match="too large.*--max-upload-mb"):
        RemoteClient(server.url, TOKEN).segment(*small_volume, ["liver"], {})


def test_busy_server_asks_to_retry_later(serve, small_volume):
    server = serve(queue_limit=1)
    release = occupy_worker(server.app)
    try:
        server.app.state.queue.submit(lambda cancelled: None)
        with pytest.raises(RemoteError, match=r"busy \(503\): retry later, in about \d+ s"):
            RemoteClient(server.url, TOKEN).segment(*small_volume, ["liver"], {})
    finally:
        release.set()


def test_cancel_while_queued_closes_the_connection_and_frees_the_queue(serve, small_volume):
    server = serve()
    queue = server.app.state.queue
    release = occupy_worker(server.app)
    try:
        began = time.monotonic()

        def cancelled() -> bool:
            return queue.waiting == 1 or time.monotonic() - began > 20

        with pytest.raises(RemoteCancelled):
            RemoteClient(server.url, TOKEN).segment(*small_volume, ["liver"], {}, cancelled=cancelled)
        assert wait_until(lambda: queue.waiting == 0)
    finally:
        release.set()


def test_client_timeout_is_reported(serve, small_volume):
    server = serve()
    release = occupy_worker(server.app)
    try:
        with pytest.raises(RemoteError, match="within 1 s"):
            RemoteClient(server.url, TOKEN, timeout=1).segment(*small_volume, ["liver"], {})
    finally:
        release.set()


@pytest.mark.parametrize("kwargs, message", [
    ({"url": "ftp://host"}, "url must look like"),
    ({"url": "http://127.0.0.1:1", "timeout": 0}, "timeout must be > 0"),
])
def test_bad_client_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RemoteClient(**kwargs)


def test_bad_segment_arguments_are_refused_before_any_request(small_volume):
    client = RemoteClient("http://127.0.0.1:1", TOKEN)
    volume, matrix = small_volume
    with pytest.raises(ValueError, match="prompts"):
        client.segment(volume, matrix, [], {})
    with pytest.raises(ValueError, match="ijk_to_ras"):
        client.segment(volume, matrix[:3], ["liver"], {})
    with pytest.raises(ValueError, match="volume_kji"):
        client.segment(volume[0], matrix, ["liver"], {})


def test_tls_server_round_trip_and_certificate_errors(serve, certificate, small_volume):
    cert, key = certificate
    server = serve(ssl_certfile=cert, ssl_keyfile=key)
    assert server.url.startswith("https://")
    with pytest.raises(RemoteError, match="certificate of 127.0.0.1 could not be verified"):
        RemoteClient(server.url, TOKEN).health()
    with pytest.raises(RemoteError, match="must start with https://"):
        RemoteClient(server.url.replace("https://", "http://"), TOKEN).health()
    client = RemoteClient(server.url, TOKEN, ca_file=str(cert))
    labelmap, labels, _ = client.segment(*small_volume, ["liver"], {})
    assert labelmap.shape == small_volume[0].shape and labels == {1: "liver"}


def test_https_url_for_a_plain_http_server_is_explained(module_server):
    with pytest.raises(RemoteError, match="must start with http://"):
        RemoteClient(module_server.url.replace("http://", "https://"), TOKEN).health()


def test_concurrent_clients_all_get_their_own_answer(module_server, small_volume):
    volume, matrix = small_volume
    results: dict[int, tuple] = {}

    def run(index: int) -> None:
        results[index] = RemoteClient(module_server.url, TOKEN).segment(volume, matrix, [f"organ {index}"], {})

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(results) == [0, 1, 2, 3]
    assert all(results[i][1] == {1: f"organ {i}"} for i in range(4))


def test_eight_japanese_prompts_round_trip(module_server, small_volume):
    prompts = [f"{organ}の{where}に広がる淡いすりガラス影、二か所" for organ in ("右肺", "左肺", "肝臓", "脾臓")
               for where in ("上部", "下部")]
    labelmap, labels, _ = RemoteClient(module_server.url, TOKEN, timeout=120).segment(*small_volume, prompts, {})
    assert labels == {index + 1: prompt for index, prompt in enumerate(prompts)}
    assert labelmap.shape == small_volume[0].shape


class _OtherVersionServer(http.server.BaseHTTPRequestHandler):
    """A server of another API version (no such server exists yet): /v1/info says `info_api`,
    /v1/segment answers a JSON body of API version 3."""

    info_api = 2

    def _json(self, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._json({"api": self.info_api, "limits": {}})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self._json({"api": 3, "labels": {"1": "liver"}, "labelmap": {"format": "nii.gz", "encoding": "base64",
                                                                     "data": ""}})

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("info_api, message", [(1, "speaks API version 1"), (2, "answered in API version 3")])
def test_the_client_refuses_a_server_or_an_answer_of_another_api_version(small_volume, info_api, message):
    handler = type("Handler", (_OtherVersionServer,), {"info_api": info_api})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            with pytest.raises(RemoteError, match=message):
                RemoteClient(f"http://127.0.0.1:{server.server_port}", TOKEN).segment(*small_volume, ["liver"], {})
        finally:
            server.shutdown()
