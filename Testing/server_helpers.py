"""Helpers and fixtures of the server tests: a real uvicorn server on 127.0.0.1, the tiny model.

No conftest.py here: Testing/conftest.py is imported as `conftest` by other suites, and a second
one would shadow it. Test modules import the fixtures they use from this module.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

_VOLUMES = {  # committed sample (Testing/data/volumes) -> the same file in the shared data
    "totalseg-ct.nii.gz": ("totalseg-example-ct", "ct.nii.gz"),
    "spinalcord-t2.nii.gz": ("spinalcord-t2-mri", "t2.nii.gz"),
}

__all__ = ["real_volume", "cropped_volume", "TOKEN", "LiveServer", "auth", "multipart_body", "raw_request", "read_answer",
           "occupy_worker", "same_geometry", "wait_until", "ResidentMemory",
           "segmenter", "serve", "module_server", "click_server", "small_nrrd", "certificate"]

TOKEN = "test-token-0123456789abcdef"


class LiveServer:
    """A uvicorn server running `app` on a free loopback port, in a daemon thread, configured as
    `tevia serve` configures it (tevia.serving.server.transport.uvicorn_config)."""

    def __init__(self, app, ssl_certfile: Path | None = None, ssl_keyfile: Path | None = None,
                 log_level: str = "warning") -> None:
        import uvicorn

        from tevia.serving.server.transport import uvicorn_config

        self.app = app
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        scheme = "https" if ssl_certfile else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        config = uvicorn_config(app, app.state.settings, "127.0.0.1", self.port, ssl_certfile=ssl_certfile,
                                ssl_keyfile=ssl_keyfile, log_level=log_level)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(20)
        self._socket.close()


def real_volume(name: str) -> Path:
    """A small real volume: the committed sample when present, else the shared data's copy."""
    from conftest import TESTDATA, shared_path

    committed = TESTDATA / "volumes" / name
    return committed if committed.exists() else shared_path("volumes", *_VOLUMES[name])


def cropped_volume(name: str) -> sitk.Image:
    """A crop of a real volume (about 1/4 of its voxels, geometry kept) for quick round trips."""
    image = sitk.ReadImage(str(real_volume(name)))
    size = image.GetSize()
    return image[size[0] // 5: size[0] - size[0] // 5, size[1] // 5: size[1] - size[1] // 5,
                 size[2] // 4: size[2] - size[2] // 4]


def auth(token: str = TOKEN) -> dict[str, str]:
    """The Authorization header for `token`."""
    return {"Authorization": f"Bearer {token}"}


def multipart_body(fields: list[tuple[str, bytes, str | None]]) -> tuple[bytes, str]:
    """A multipart/form-data body from (name, value, filename-or-None) triples, and its Content-Type."""
    boundary = "testboundary1234567890"
    body = b""
    for name, value, filename in fields:
        extra = f'; filename="{filename}"' if filename is not None else ""
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n'.encode()
        body += value + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def raw_request(port: int, head: str, body: bytes = b"", timeout: float = 20) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes to 127.0.0.1:port and read the whole answer: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    header_block, _, payload = answer.partition(b"\r\n\r\n")
    lines = header_block.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, payload


def read_answer(answer, folder: Path) -> tuple[dict, sitk.Image]:
    """The JSON answer of /v1/segment (API 2): (its fields, the labelmap as an ITK image)."""
    assert answer.headers["content-type"] == "application/json", answer.headers
    payload = json.loads(answer.content)
    assert payload["api"] == 2 and payload["labelmap"]["format"] == "nii.gz"
    path = folder / "answer.nii.gz"
    path.write_bytes(base64.b64decode(payload["labelmap"]["data"]))
    return payload, sitk.ReadImage(str(path))


class ResidentMemory:
    """Samples this process's resident memory (VmRSS) every 5 ms while active: `peak_growth`
    is the most it rose above its value on entry, in bytes (Linux /proc)."""

    def __init__(self) -> None:
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def now() -> int:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc/self/status")

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> "ResidentMemory":
        self.start = self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, self.now())

    @property
    def peak_growth(self) -> int:
        return self.peak - self.start


def wait_until(condition: Callable[[], bool], seconds: float = 20) -> bool:
    """Poll `condition` until it holds or `seconds` pass; returns its last value."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def occupy_worker(app) -> threading.Event:
    """Keep the app's inference thread busy until the returned event is set."""
    release = threading.Event()
    started = threading.Event()

    def block(cancelled):
        started.set()
        release.wait(30)

    app.state.queue.submit(block)
    assert started.wait(10), "the inference thread did not start the blocking job"
    return release


def same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    """Whether two images share size, spacing, origin and direction (to 1e-5)."""
    return a.GetSize() == b.GetSize() and all(
        np.allclose(getattr(a, f"Get{n}")(), getattr(b, f"Get{n}")(), atol=1e-5) for n in ("Spacing", "Origin", "Direction"))


@pytest.fixture(scope="session")
def segmenter(tiny_model_dir):
    """The tiny random-weight model loaded on the CPU (one thread)."""
    import torch

    from tevia.inference.segmenter import Segmenter

    torch.set_num_threads(1)
    return Segmenter.load(str(tiny_model_dir), device="cpu")


@pytest.fixture
def serve(segmenter, tmp_path) -> Iterator[Callable[..., LiveServer]]:
    """serve(**settings) -> a started LiveServer whose temp folder is tmp_path/server-tmp."""
    from tevia.serving.server import ServerSettings, create_app

    servers: list[LiveServer] = []

    def start(ssl_certfile: Path | None = None, ssl_keyfile: Path | None = None, **settings) -> LiveServer:
        settings.setdefault("token", TOKEN)
        settings.setdefault("temp_dir", tmp_path / "server-tmp")
        app = create_app(segmenter, ServerSettings(**settings))
        server = LiveServer(app, ssl_certfile, ssl_keyfile).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__()


@pytest.fixture(scope="module")
def small_nrrd(tmp_path_factory) -> bytes:
    """A real CT crop (TotalSegmentator example CT, 40x40x6 voxels) as NRRD bytes."""
    image = sitk.ReadImage(str(real_volume("totalseg-ct.nii.gz")))[40:80, 30:70, 10:16]
    path = tmp_path_factory.mktemp("vol") / "crop.nrrd"
    sitk.WriteImage(image, str(path), useCompression=True)
    return path.read_bytes()


@pytest.fixture(scope="module")
def module_server(segmenter, tmp_path_factory) -> Iterator[LiveServer]:
    """One server with the default limits and the test token, shared by a module's tests."""
    from tevia.serving.server import ServerSettings, create_app

    settings = ServerSettings(token=TOKEN, temp_dir=tmp_path_factory.mktemp("server-tmp"),
                              max_upload_bytes=8 * 2**20)
    with LiveServer(create_app(segmenter, settings)) as server:
        yield server


@pytest.fixture(scope="module")
def click_server(click_model_dir, tmp_path_factory) -> Iterator[LiveServer]:
    """A server of the bundled default model, which takes clicks (conftest.click_model_dir), and the test token."""
    from tevia.inference.segmenter import Segmenter
    from tevia.serving.server import ServerSettings, create_app

    settings = ServerSettings(token=TOKEN, temp_dir=tmp_path_factory.mktemp("server-tmp"))
    with LiveServer(create_app(Segmenter.load(click_model_dir, device="cpu"), settings)) as server:
        yield server


@pytest.fixture(scope="session")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1 (PEM files), made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"),
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return folder / "cert.pem", folder / "key.pem"
