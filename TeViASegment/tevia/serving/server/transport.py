"""The HTTP layer under the app: uvicorn with a bounded number of connections, a deadline for
each request's head, and an access log without query strings or unknown paths.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`) but has no deadline for a
new connection's first request line and headers: `HeadTimeoutProtocol` adds one.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from tevia.serving.server.settings import ServerSettings

__all__ = ["HeadTimeoutProtocol", "RedactedAccessLog", "uvicorn_config", "KEEP_ALIVE_SECONDS"]

KEEP_ALIVE_SECONDS = 5
_LOGGED_PATH = re.compile(r"/v1/[a-z]{1,15}")


class HeadTimeoutProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection that takes more than `head_timeout`
    seconds to send a request's line and headers (counted from the connection's opening and
    from each answer)."""

    head_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:
            self._cancel_head_timer()  # a request head arrived whole

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        waiting_for_head = self.cycle is None or self.cycle.response_complete
        if waiting_for_head and not self.transport.is_closing():
            self.logger.info("closed a connection that sent no complete request head within %.0f s",
                             self.head_timeout)
            self.transport.close()


class RedactedAccessLog(logging.Filter):
    """Rewrites uvicorn's access-log records: the query string becomes `?<redacted>` and a path
    that is not shaped like an API route (`/v1/<name>`) becomes `<other path>`, so a token or
    other data a client put in the URL never reaches the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, target, version, status = record.args
            path, mark, _ = str(target).partition("?")
            shown = path if _LOGGED_PATH.fullmatch(path) else "<other path>"
            record.args = (client, method, shown + ("?<redacted>" if mark else ""), version, status)
        return True


_ACCESS_FILTER = RedactedAccessLog()


def uvicorn_config(app: Any, settings: ServerSettings, host: str, port: int, *, ssl_certfile: Path | None = None,
                   ssl_keyfile: Path | None = None, log_level: int | str = logging.INFO) -> uvicorn.Config:
    """The uvicorn configuration `tevia serve` runs `app` with.

    At most `settings.max_connections` connections are served (uvicorn answers 503 beyond
    them), a request head must arrive within `settings.head_timeout` seconds, idle keep-alive
    connections close after KEEP_ALIVE_SECONDS, and the access log is redacted.
    """
    protocol = type("TeViAHTTPProtocol", (HeadTimeoutProtocol,), {"head_timeout": settings.head_timeout})
    config = uvicorn.Config(app, host=host, port=port, http=protocol, log_level=log_level,
                            limit_concurrency=settings.max_connections, timeout_keep_alive=KEEP_ALIVE_SECONDS,
                            ssl_certfile=ssl_certfile and str(ssl_certfile),
                            ssl_keyfile=ssl_keyfile and str(ssl_keyfile), server_header=False)
    logging.getLogger("uvicorn.access").addFilter(_ACCESS_FILTER)  # after Config set up uvicorn's logging
    return config
