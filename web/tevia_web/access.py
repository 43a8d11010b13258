"""The page's token: with a token, every HTTP and websocket request must carry it.

The first visit opens `http://host:port/?token=TOKEN`; the answer sets a cookie (HttpOnly,
SameSite=Strict) that the page's later requests, its websocket included, carry. Any request
without the token or the cookie gets 401. Tokens follow `tevia serve`'s rules
(tevia.serving.server.auth: at least 16 characters, from --token-file or TEVIA_SERVER_TOKEN).
"""

from __future__ import annotations

import hmac

from aiohttp import web

__all__ = ["COOKIE", "token_middleware"]

COOKIE = "tevia_web_token"


def token_middleware(token: str):
    """An aiohttp middleware refusing requests without `token` (query `token=` or the cookie)."""

    @web.middleware
    async def check(request: web.Request, handler):
        given = request.query.get("token") or request.cookies.get(COOKIE) or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            return web.Response(status=401, text="401: open this page with ?token=<the server's token>")
        response = await handler(request)
        if request.query.get("token") and not response.prepared:
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        return response

    return check
