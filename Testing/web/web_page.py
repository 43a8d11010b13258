"""Helpers of the web page's tests: `tevia web` as a real process on a free port, and Debian's
chromium driven by playwright (no browser download)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("TEVIA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
STATUS_DONE = "/(done|^Error.*)$/s.test(document.querySelector('#tevia-status').textContent.trim())"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def web_environment() -> dict[str, str]:
    """This process's environment for the app: headless OSMesa rendering, the source packages."""
    env = dict(os.environ, VTK_DEFAULT_OPENGL_WINDOW="vtkOSOpenGLRenderWindow",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "TeViASegment"), str(REPO / "web"),
                                         env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def start_app(folder: Path, *args: str, timeout_s: float = 180.0) -> tuple[subprocess.Popen, str]:
    """Start `tevia web` on a free port; returns the process and the page's URL once it answers."""
    port = free_port()
    log = open(folder / "app.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tevia.commands.cli", "web", "--port", str(port),
         "--settings-file", str(folder / "settings.json"), *args],
        cwd=folder, env=web_environment(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tevia web exited ({process.returncode}):\n{(folder / 'app.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.5)
    stop_app(process)
    raise TimeoutError(f"tevia web did not answer within {timeout_s} s")


def stop_app(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def launch_browser(playwright):
    """Debian's chromium (headless); the test is skipped where it is not installed."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (.ci/run installs it: apt-get install chromium)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)


def status(page) -> str:
    return page.inner_text("#tevia-status").strip()


def wait_status(page, expression: str = STATUS_DONE, timeout_s: float = 300.0) -> str:
    """Wait until the status satisfies a JS expression (default: it ends in `done` or holds an error)."""
    page.wait_for_function(expression, timeout=timeout_s * 1000)
    return status(page)


def wait_status_change(page, previous: str, timeout_s: float = 120.0) -> str:
    page.wait_for_function("(previous) => document.querySelector('#tevia-status').textContent.trim() !== previous",
                           arg=previous, timeout=timeout_s * 1000)
    return status(page)


def slice_view(page):
    """The largest view on the page (the axial slice view of the default layout)."""
    images = page.locator("img.image-display-area")
    boxes = [images.nth(i).bounding_box() for i in range(images.count())]
    sizes = [(box["width"] * box["height"] if box else 0) for box in boxes]
    return images.nth(sizes.index(max(sizes)))


def download(page, button_id: str, target: Path) -> Path:
    with page.expect_download() as info:
        page.click(f"#{button_id}")
    info.value.save_as(target)
    return target
