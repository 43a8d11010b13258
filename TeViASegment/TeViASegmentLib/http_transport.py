"""HTTP transport of the remote client: one TeViA server's connection, requests and errors.

Standard library only (no requests/httpx inside Slicer). `HttpTransport` opens one connection
per request (http, or https with the system's or a given CA file), sends the bearer token,
streams a request body from bytes and file parts in chunks, waits for the answer while polling
a cancel callback (closing the connection stops the server's work), streams a 200 answer into
a file and turns every other status or network failure into a `RemoteError` whose message says
what went wrong and what to do. What the requests and answers hold is remote_client.py's part.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["RemoteError", "RemoteCancelled", "HttpTransport", "body_length"]

_CHUNK = 1 << 20
_POLL_SECONDS = 0.2
_CONNECT_TIMEOUT = 15.0


class RemoteError(Exception):
    """A failed server call, with a message that says what went wrong and what to do."""


class RemoteCancelled(RemoteError):
    """The caller cancelled the request; the connection was closed, which stops the server's work."""


def body_length(parts: list[bytes | Path]) -> int:
    """The number of bytes a body of these parts (bytes, or files sent whole) holds."""
    return sum(p.stat().st_size if isinstance(p, Path) else len(p) for p in parts)


def _chunks(parts: list[bytes | Path]) -> Iterator[bytes]:
    """The body's bytes in the order of its parts, files read in chunks of at most 1 MiB."""
    for part in parts:
        if isinstance(part, Path):
            with open(part, "rb") as file:
                while chunk := file.read(_CHUNK):
                    yield chunk
        else:
            yield part


class HttpTransport:
    """Requests to one server.

    Args:
        url: the server's base URL, "http://host:port" or "https://host:port", with an optional
            path prefix (kept, for servers behind a reverse proxy).
        token: the bearer token sent with every request, or None.
        timeout: seconds a whole request may take (connect, upload, wait, download).
        ca_file: a PEM file of certificate authorities to trust for https; None: the system's.

    Raises:
        ValueError: a URL that is not http(s) with a host, or a timeout that is not > 0.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 600, ca_file: str | None = None) -> None:
        parsed = urllib.parse.urlsplit(url.strip())
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"url must look like http://host:port or https://host:port, got {url!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.url = urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path.rstrip("/"), "", ""))
        self.token = token.strip() if token else None
        self.timeout = float(timeout)
        self._parsed = parsed
        self._prefix = parsed.path.rstrip("/")
        self._context = ssl.create_default_context(cafile=ca_file) if parsed.scheme == "https" else None

    def get_json(self, path: str) -> dict:
        """GET `path` (below the base URL) and return its JSON object; RemoteError otherwise."""
        with tempfile.TemporaryDirectory(prefix="tevia-remote-") as folder:
            body_path = Path(folder) / "answer.json"
            self.request("GET", path, [], None, body_path)
            try:
                answer = json.loads(body_path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                answer = None
        if not isinstance(answer, dict):
            raise RemoteError(f"{self.url}{path} did not answer JSON: is this a TeViA server?")
        return answer

    def request(self, method: str, path: str, parts: list[bytes | Path], content_type: str | None, answer: Path,
                cancelled: Callable[[], bool] | None = None) -> None:
        """Send a request and stream the body of a 200 answer into the file `answer`.

        Args:
            method: "GET" or "POST".
            path: the path below the base URL, e.g. "/v1/segment".
            parts: the body (POST), bytes and files sent whole, in order; [] for a GET.
            content_type: the body's Content-Type (POST).
            answer: the file the answer's body is written to.
            cancelled: polled during upload, wait and download; True closes the connection and
                raises RemoteCancelled.

        Raises:
            RemoteError: another status than 200 (its message depends on the status), a network
                or TLS failure, or no complete answer within the timeout; RemoteCancelled when
                cancelled.
        """
        cancelled = cancelled or (lambda: False)
        deadline = time.monotonic() + self.timeout
        connection = self._connection()
        try:
            connection.putrequest(method, self._prefix + path)
            for name, value in self._headers().items():
                connection.putheader(name, value)
            if method == "POST":
                connection.putheader("Content-Type", content_type)
                connection.putheader("Content-Length", str(body_length(parts)))
            connection.endheaders()
            sent_all = self._send(connection, parts, cancelled, deadline)
            self._wait_readable(connection, cancelled, deadline)
            connection.sock.settimeout(max(1.0, deadline - time.monotonic()))
            try:
                response = connection.getresponse()
            except (http.client.RemoteDisconnected, ConnectionError) as error:
                if sent_all:
                    raise
                raise RemoteError(f"the server at {self.url} closed the connection during the upload ({error}); "
                                  f"the volume may exceed its upload limit") from None
            if response.status != 200:
                raise RemoteError(self._status_message(response, path))
            with open(answer, "wb") as file:
                while chunk := response.read(_CHUNK):
                    if cancelled():
                        raise RemoteCancelled("cancelled while downloading the result")
                    if time.monotonic() > deadline:
                        raise RemoteError(f"no complete answer from {self.url} within {self.timeout:.0f} s")
                    file.write(chunk)
        except RemoteError:
            raise
        except ssl.SSLCertVerificationError as error:
            raise RemoteError(f"the TLS certificate of {self._parsed.hostname} could not be verified "
                              f"({error.verify_message}): if the server uses a self-signed certificate, give its "
                              f"CA file (ca_file) or set SSL_CERT_FILE; otherwise check the URL") from None
        except ssl.SSLError as error:
            raise RemoteError(f"TLS with {self.url} failed ({error.reason or error}): if the server runs without "
                              f"TLS, the URL must start with http://") from None
        except ConnectionRefusedError:
            raise RemoteError(f"could not connect to {self.url}: connection refused. Is `tevia serve` running "
                              f"there, on this port?") from None
        except socket.gaierror:
            raise RemoteError(f"unknown host {self._parsed.hostname!r}: check the server URL") from None
        except (TimeoutError, socket.timeout):
            raise RemoteError(f"no answer from {self.url} within {self.timeout:.0f} s (or the connection timed "
                              f"out): check the URL and the network, or raise the timeout") from None
        except (http.client.RemoteDisconnected, http.client.BadStatusLine):
            hint = " If it uses TLS, the URL must start with https://." if self._context is None else ""
            raise RemoteError(f"the server at {self.url} closed the connection without an answer.{hint}") from None
        except (OSError, http.client.HTTPException) as error:
            raise RemoteError(f"network error talking to {self.url}: {error}") from None
        finally:
            connection.close()

    def _connection(self) -> http.client.HTTPConnection:
        """A new (not yet connected) connection; connecting may take at most 15 s."""
        host, port = self._parsed.hostname, self._parsed.port
        timeout = min(self.timeout, _CONNECT_TIMEOUT)
        if self._context is not None:
            return http.client.HTTPSConnection(host, port, timeout=timeout, context=self._context)
        return http.client.HTTPConnection(host, port, timeout=timeout)

    def _headers(self) -> dict[str, str]:
        """Accept JSON, and the bearer token when there is one."""
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _send(self, connection: http.client.HTTPConnection, parts: list[bytes | Path],
              cancelled: Callable[[], bool], deadline: float) -> bool:
        """Send the body; False when the server closed the connection early (its answer follows)."""
        connection.sock.settimeout(max(1.0, deadline - time.monotonic()))
        try:
            for chunk in _chunks(parts):
                if cancelled():
                    raise RemoteCancelled("cancelled during the upload")
                connection.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def _wait_readable(self, connection: http.client.HTTPConnection, cancelled: Callable[[], bool],
                       deadline: float) -> None:
        """Wait until the answer begins, polling `cancelled` every 0.2 s; TimeoutError at the deadline."""
        sock = connection.sock
        while not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            if cancelled():
                raise RemoteCancelled("cancelled while the server was working")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            readable, _, _ = select.select([sock], [], [], min(_POLL_SECONDS, remaining))
            if readable:
                return

    def _status_message(self, response: http.client.HTTPResponse, path: str) -> str:
        """The user's message for an answer of another status than 200, with the server's detail."""
        raw = response.read(64 * 1024)
        try:
            detail = json.loads(raw).get("detail", "")
        except (ValueError, AttributeError):
            detail = raw.decode("utf-8", "replace").strip()[:300]
        status = response.status
        if status == 401:
            if not self.token:
                return f"the server at {self.url} requires a token (401): enter it in the Remote server settings"
            return f"the server at {self.url} refused the token (401): check the token in the Remote server settings"
        if status == 413:
            return (f"the volume is too large for the server at {self.url} (413: {detail}): crop or resample it, "
                    f"or ask the server's administrator to raise --max-upload-mb")
        if status == 422:
            return f"the server refused the request (422): {detail}"
        if status == 503:
            retry = response.headers.get("Retry-After", "a few")
            return f"the server at {self.url} is busy (503): retry later, in about {retry} s. {detail}"
        if status in (408, 504):
            return f"the server at {self.url} timed out ({status}): {detail}"
        if status == 404:
            return f"no TeViA server at {self.url} (404 for {path}): check the URL"
        return f"the server at {self.url} answered {status}: {detail or response.reason}"
