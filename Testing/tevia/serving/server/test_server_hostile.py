"""Hostile connections and files: head timeout, connection bound, error messages without server
paths, the temporary folder's owner and mode, a request folder swapped for a link (issue 19,
items 7, 8 and 10; the access log, item 6, is tested on `tevia serve` in test_server_auth.py)."""

from __future__ import annotations

import gzip
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from server_helpers import (auth, multipart_body, occupy_worker, raw_request, real_volume, segmenter,  # noqa: F401
                            serve, small_nrrd, wait_until)

from tevia.serving.server import ServerSettings, create_app

HEALTH = "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def _seconds_until_closed(sock: socket.socket, began: float, limit: float = 15) -> float:
    """Read (and drop) until the server closes `sock`; seconds since `began`."""
    sock.settimeout(limit)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - began


def _post(server, volume: bytes) -> httpx.Response:
    body, content_type = multipart_body([("volume", volume, "v.bin"), ("text", b"liver", None)])
    return httpx.post(f"{server.url}/v1/segment", content=body, timeout=60,
                      headers={**auth(), "Content-Type": content_type})


def test_idle_slow_and_trickling_connections_are_closed_at_the_head_timeout(serve):
    server = serve(head_timeout=1.0)
    began = time.monotonic()
    idle = socket.create_connection(("127.0.0.1", server.port))
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    trickle = socket.create_connection(("127.0.0.1", server.port))
    closed_at = None
    for byte in HEALTH.encode()[:-2] * 10:  # one byte every 0.1 s, never a whole head
        try:
            trickle.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed_at = time.monotonic() - began
            break
        time.sleep(0.1)
    with idle, slow, trickle:
        assert _seconds_until_closed(idle, began) < 4
        assert _seconds_until_closed(slow, began) < 4
        assert (closed_at or _seconds_until_closed(trickle, began)) < 4
    status, _, body = raw_request(server.port, HEALTH)  # a whole head in time is answered
    assert status == 200 and b'"status":"ok"' in body


def test_connections_beyond_the_bound_get_503(serve):
    server = serve(max_connections=3, head_timeout=2.0)
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        time.sleep(0.2)
        status, _, body = raw_request(server.port, HEALTH)
        assert status == 503
    finally:
        for sock in idle:
            sock.close()
    assert wait_until(lambda: raw_request(server.port, HEALTH)[0] == 200, 10)


@pytest.mark.parametrize("volume", [
    "truncated-nifti-gz",
    b"NRRD0004\ntype: no-such-type\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n\n" + bytes(16),
    b"NRRD0004\ntype: short\ndimension: 3\nsizes: 20 20 20\nencoding: gzip\nendian: little\n\n" + b"\x1f\x8b" + bytes(40),
])
def test_error_messages_name_no_server_path(serve, tmp_path, volume):
    if volume == "truncated-nifti-gz":
        whole = real_volume("totalseg-ct.nii.gz").read_bytes()
        volume = whole[:len(whole) // 2]
    server = serve()
    answer = _post(server, volume)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert "uploaded volume" in detail or "could not be read" in detail
    for leak in (str(tmp_path), "/tmp", "request-", "volume.nii", "volume.nrrd", ".cxx"):
        assert leak not in detail, detail


def test_a_temp_dir_others_could_write_or_swap_is_refused(segmenter, tmp_path):
    from tevia.serving.server.command import configure_parser, settings_from_args
    import argparse

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ValueError, match=r"writable by other users \(mode 777\); run `chmod 700"):
        create_app(segmenter, ServerSettings(temp_dir=shared))
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    with pytest.raises(ValueError, match="writable by other users"):
        settings_from_args(parser.parse_args(["--insecure-no-token", "--temp-dir", str(shared)]))
    link = tmp_path / "link"
    link.symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ValueError, match="is a symbolic link"):
        create_app(segmenter, ServerSettings(temp_dir=link))
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 65534, 65534)
    else:
        foreign = Path("/")
    with pytest.raises(ValueError, match="belongs to user id"):
        create_app(segmenter, ServerSettings(temp_dir=foreign))
    fresh = tmp_path / "new" / "server-tmp"
    app = create_app(segmenter, ServerSettings(temp_dir=fresh))
    app.state.queue.stop()
    assert fresh.stat().st_mode & 0o777 == 0o700


def test_a_request_folder_swapped_for_a_link_is_removed_as_a_link(serve, tmp_path, small_nrrd):
    server = serve()
    queue, root = server.app.state.queue, Path(server.app.state.temp_root)
    victim = tmp_path / "victim"
    victim.mkdir()
    kept = {"precious.txt": b"keep me", "volume.nrrd": small_nrrd, "labelmap.nii.gz": gzip.compress(b"mine")}
    for name, content in kept.items():
        (victim / name).write_bytes(content)
    answers: list[httpx.Response] = []
    release = occupy_worker(server.app)
    thread = threading.Thread(target=lambda: answers.append(_post(server, small_nrrd)))
    try:
        thread.start()
        assert wait_until(lambda: queue.waiting == 1)
        [folder] = list(root.iterdir())
        folder.rename(tmp_path / "moved")
        folder.symlink_to(victim, target_is_directory=True)
    finally:
        release.set()
        thread.join(60)
    assert answers[0].status_code == 500
    assert "the server's log has the details" in answers[0].json()["detail"]
    assert wait_until(lambda: not os.path.lexists(folder))
    assert {p.name: p.read_bytes() for p in victim.iterdir()} == kept
