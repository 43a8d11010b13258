"""`tevia web`'s binding rule and its token (tevia_web.command, tevia_web.access): a real aiohttp
server on 127.0.0.1 behind the token middleware."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "web"))

from tevia_web.access import COOKIE, token_middleware  # noqa: E402
from tevia_web.command import _token  # noqa: E402

TOKEN = "a-token-of-more-than-16-chars"


def test_another_host_than_loopback_needs_a_token(tmp_path, monkeypatch):
    monkeypatch.delenv("TEVIA_SERVER_TOKEN", raising=False)
    assert _token("127.0.0.1", None) is None
    with pytest.raises(ValueError, match="--host '0.0.0.0' serves the page beyond this computer"):
        _token("0.0.0.0", None)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert _token("0.0.0.0", str(token_file)) == TOKEN
    token_file.write_text("short")
    with pytest.raises(ValueError, match="at least 16"):
        _token("0.0.0.0", str(token_file))


def test_requests_without_the_token_get_401_and_the_token_sets_a_cookie():
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    async def run() -> None:
        async def page(request: web.Request) -> web.Response:
            return web.Response(text="page")

        app = web.Application(middlewares=[token_middleware(TOKEN)])
        app.router.add_get("/", page)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            assert (await client.get("/")).status == 401
            assert (await client.get("/?token=wrong-token-of-some-length")).status == 401
            first = await client.get(f"/?token={TOKEN}")
            assert first.status == 200 and COOKIE in first.cookies
            assert (await client.get("/")).status == 200  # the cookie jar now carries the token
            client.session.cookie_jar.clear()
            assert (await client.get("/")).status == 401

    asyncio.run(run())
