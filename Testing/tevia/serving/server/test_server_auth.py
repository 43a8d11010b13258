"""Token authentication, token loading and the binding rule of `tevia serve`."""

from __future__ import annotations

import argparse
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from server_helpers import (TOKEN, auth, certificate, module_server, raw_request, segmenter,  # noqa: F401
                            serve)

from tevia.serving.server.auth import bearer_matches, check_bind, load_token
from tevia.serving.server.command import configure_parser, settings_from_args

REPO = Path(__file__).resolve().parents[4]


def test_health_is_open_and_tells_nothing_about_the_model(module_server):
    answer = httpx.get(f"{module_server.url}/v1/health")
    assert answer.status_code == 200
    assert set(answer.json()) == {"status", "busy", "waiting"}


@pytest.mark.parametrize("headers", [{}, auth("wrong-token-0123456789abcdef"), auth(TOKEN + "x"),
                                     {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}])
def test_info_and_segment_refuse_a_missing_or_wrong_token(module_server, headers):
    for method, path in (("GET", "/v1/info"), ("POST", "/v1/segment")):
        answer = httpx.request(method, f"{module_server.url}{path}", headers=headers)
        assert answer.status_code == 401, (method, path, headers)
        assert answer.headers["www-authenticate"] == "Bearer"
        assert "token" in answer.json()["detail"]


def test_the_right_token_opens_info(module_server):
    answer = httpx.get(f"{module_server.url}/v1/info", headers=auth())
    assert answer.status_code == 200
    info = answer.json()
    assert info["model"] == "tiny-test" and info["device"] == "cpu" and info["side_convention"] == "image"
    assert info["example_prompts"] and info["api"] == 2
    assert info["limits"]["max_upload_bytes"] == 8 * 2**20


def test_a_request_without_token_is_refused_before_its_body_is_read(module_server):
    head = (f"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            f"Content-Length: 1000000000\r\nConnection: close\r\n\r\n")
    status, headers, _ = raw_request(module_server.port, head)
    assert status == 401


def test_bearer_matches_only_the_exact_token():
    assert bearer_matches(f"Bearer {TOKEN}", TOKEN)
    assert bearer_matches(f"bearer {TOKEN}", TOKEN)
    assert not bearer_matches(f"Bearer {TOKEN[:-1]}", TOKEN)
    assert not bearer_matches(TOKEN, TOKEN)
    assert not bearer_matches(None, TOKEN)
    assert not bearer_matches("Bearer ünïcode", TOKEN)


def test_load_token_from_file_then_environment(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    token_file.chmod(0o600)
    assert load_token(token_file, {"TEVIA_SERVER_TOKEN": "other-token-0123456789"}) == TOKEN
    assert load_token(None, {"TEVIA_SERVER_TOKEN": TOKEN}) == TOKEN
    assert load_token(None, {}) is None
    with pytest.raises(ValueError, match="at least 16"):
        load_token(None, {"TEVIA_SERVER_TOKEN": "short"})
    with pytest.raises(ValueError, match="does not exist"):
        load_token(tmp_path / "missing", {})
    token_file.write_text("\n")
    with pytest.raises(ValueError, match="0 characters"):
        load_token(token_file, {})


def test_check_bind_rules():
    check_bind("0.0.0.0", TOKEN, insecure_no_token=False)
    check_bind("127.0.0.1", None, insecure_no_token=True)
    with pytest.raises(ValueError, match="no token"):
        check_bind("127.0.0.1", None, insecure_no_token=False)
    for host in ("0.0.0.0", "192.168.1.5", "localhost", "::"):
        with pytest.raises(ValueError, match="127.0.0.1 only"):
            check_bind(host, None, insecure_no_token=True)
    with pytest.raises(ValueError, match="together with a token"):
        check_bind("127.0.0.1", TOKEN, insecure_no_token=True)


def _serve(args: list[str], env_token: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TEVIA_SERVER_TOKEN"}
    env.update(PYTHONPATH=str(REPO / "TeViASegment"), OMP_NUM_THREADS="1")
    if env_token:
        env["TEVIA_SERVER_TOKEN"] = env_token
    return subprocess.Popen([sys.executable, "-m", "tevia.commands.cli", "serve", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("args, message", [
    ([], "no token"),
    (["--insecure-no-token", "--host", "0.0.0.0"], "127.0.0.1 only"),
    (["--ssl-certfile", "cert.pem"], "go together"),
])
def test_serve_refuses_unsafe_options_before_loading_a_model(args, message):
    process = _serve(["--model", "does-not-matter", *args], env_token=TOKEN if "--ssl-certfile" in args else None)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert message in output


def _wait_healthy(url: str, process: subprocess.Popen, verify: ssl.SSLContext) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            if httpx.get(f"{url}/v1/health", timeout=2, verify=verify).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.3)
    raise AssertionError("tevia serve did not become healthy")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_tevia_serve_runs_https_with_a_token_file_and_logs_no_token(tiny_model_dir, tmp_path, certificate):
    cert, key = certificate
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    process = _serve(["--model", str(tiny_model_dir), "--device", "cpu", "--port", str(port),
                      "--temp-dir", str(tmp_path / "tmp"), "--token-file", str(token_file), "--precision", "bf16",
                      "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)])
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        _wait_healthy(url, process, trust)
        assert httpx.get(f"{url}/v1/info", verify=trust).status_code == 401
        info = httpx.get(f"{url}/v1/info", headers=auth(), verify=trust).json()
        assert info["model"] == "tiny-test" and info["precision"] == "bf16"
        assert httpx.get(f"{url}/v1/info?token={TOKEN}", verify=trust).status_code == 401
        assert httpx.get(f"{url}/v1/{TOKEN}/info", verify=trust).status_code == 401
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert "token required" in output and TOKEN not in output
    assert '"GET /v1/info?<redacted> HTTP/1.1" 401' in output  # the access log, redacted
    assert '"GET <other path> HTTP/1.1" 401' in output


def test_insecure_no_token_settings_serve_loopback_without_a_token(serve, tmp_path):
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(["--insecure-no-token", "--temp-dir", str(tmp_path / "tmp")])
    settings = settings_from_args(args)
    assert settings.token is None and args.host == "127.0.0.1"
    server = serve(token=None)
    assert httpx.get(f"{server.url}/v1/info").json()["model"] == "tiny-test"
