"""TeViASegmentLib.http_transport against a real http.server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from TeViASegmentLib import remote_client
from TeViASegmentLib.http_transport import HttpTransport, RemoteCancelled, RemoteError, body_length


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /status/<code>: that status with a JSON detail (or `raw` text); GET /echo: the request's
    path and Authorization header; POST /upload: the body's length and sha256; POST /hold: reads
    the body, then waits for the client to close the connection (the server records when)."""

    timeout = 10
    received = threading.Event()
    closed = threading.Event()

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        if parts[-1] == "echo":
            self._answer(200, json.dumps({"path": self.path, "auth": self.headers.get("Authorization")}).encode())
        elif parts[-1] == "text":
            self._answer(200, b"<html>not json</html>")
        else:
            status, kind = int(parts[1]), parts[2] if len(parts) > 2 else "json"
            body = {"json": json.dumps({"detail": f"detail of {status}"}).encode(), "raw": b"plain words",
                    "empty": b""}[kind]
            self._answer(status, body, {"Retry-After": "7"} if status == 503 else None)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/hold":
            _Handler.received.set()
            if self.rfile.read(1) == b"":  # the client closed the connection
                _Handler.closed.set()
            return
        answer = {"length": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                  "content_type": self.headers["Content-Type"]}
        self._answer(200, json.dumps(answer).encode())

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()


@pytest.mark.parametrize("path, token, message", [
    ("/status/401", None, r"requires a token \(401\): enter it in the Remote server settings"),
    ("/status/401", "a-token", r"refused the token \(401\): check the token"),
    ("/status/413", "a-token", r"too large for the server at .* \(413: detail of 413\): crop or resample it"),
    ("/status/422", "a-token", r"^the server refused the request \(422\): detail of 422$"),
    ("/status/503", "a-token", r"busy \(503\): retry later, in about 7 s\. detail of 503$"),
    ("/status/504", "a-token", r"timed out \(504\): detail of 504$"),
    ("/status/408", "a-token", r"timed out \(408\): detail of 408$"),
    ("/status/404", "a-token", r"no TeViA server at http://127\.0\.0\.1:\d+ \(404 for /status/404\): check the URL"),
    ("/status/500/raw", "a-token", r"answered 500: plain words$"),
    ("/status/500/empty", "a-token", r"answered 500: Internal Server Error$"),
])
def test_each_status_becomes_a_message_that_says_what_to_do(server_url, path, token, message):
    with pytest.raises(RemoteError, match=message):
        HttpTransport(server_url, token, timeout=5).get_json(path)


def test_get_json_sends_the_token_below_the_path_prefix_and_refuses_what_is_not_a_json_object(server_url):
    transport = HttpTransport(server_url + "/behind/proxy/", "  a-token\n", timeout=5)
    assert transport.url == server_url + "/behind/proxy"
    assert transport.get_json("/echo") == {"path": "/behind/proxy/echo", "auth": "Bearer a-token"}
    assert HttpTransport(server_url, timeout=5).get_json("/echo")["auth"] is None
    with pytest.raises(RemoteError, match=r"/text did not answer JSON: is this a TeViA server\?"):
        transport.get_json("/text")


def test_a_body_of_bytes_and_a_file_larger_than_a_chunk_arrives_whole(server_url, tmp_path):
    volume = tmp_path / "volume.bin"
    volume.write_bytes(os.urandom((5 << 20) // 2))  # 2.5 chunks
    parts: list[bytes | Path] = [b"--head\r\n", volume, b"\r\n--tail--\r\n"]
    expected = b"--head\r\n" + volume.read_bytes() + b"\r\n--tail--\r\n"
    assert body_length(parts) == len(expected)
    answer = tmp_path / "answer.json"
    HttpTransport(server_url, "a-token", timeout=10).request("POST", "/upload", parts, "multipart/x", answer)
    assert json.loads(answer.read_text()) == {"length": len(expected), "sha256": hashlib.sha256(expected).hexdigest(),
                                              "content_type": "multipart/x"}


def test_cancel_while_the_server_works_closes_the_connection(server_url, tmp_path):
    _Handler.received.clear()
    _Handler.closed.clear()
    began = time.monotonic()
    with pytest.raises(RemoteCancelled) as raised:  # `raised` keeps the request's frame (and connection) alive
        HttpTransport(server_url, "a-token", timeout=30).request(
            "POST", "/hold", [b"x" * 100], "text/plain", tmp_path / "answer.json", _Handler.received.is_set)
    assert time.monotonic() - began < 2, "the cancel is polled every 0.2 s, not after the timeout"
    assert _Handler.closed.wait(5), "the server saw the connection closed, by the transport, not by the collector"
    assert str(raised.value) == "cancelled while the server was working"
    assert not (tmp_path / "answer.json").exists()


def test_remote_client_names_the_transport_errors():
    assert remote_client.RemoteError is RemoteError and remote_client.RemoteCancelled is RemoteCancelled
    assert set(remote_client.__all__) == {"RemoteError", "RemoteCancelled", "RemoteClient", "RemoteAnswer",
                                          "API_VERSION"}
