"""The worker protocol's request checks (PROTOCOL.md): parsing a request line, its optional
``input_key`` and ``clicks``, and reading bounded lines. Every malformed request becomes a
RequestError that the worker answers with an ``error`` event and then keeps serving.
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Iterator
from typing import IO, Any

from tevia.volume.clicks import RequestClick, parse_clicks

__all__ = ["PROTOCOL_VERSION", "ERROR_CODES", "MAX_REQUEST_CHARS", "MAX_INPUT_KEY_CHARS", "RequestError",
           "parse_request", "input_key", "request_clicks", "request_lines", "shown"]

PROTOCOL_VERSION = 1
ERROR_CODES = ("bad_request", "not_found", "unsupported_format", "bad_input", "model_error",
               "out_of_memory", "cancelled", "internal")
_REQUEST_TYPES = ("load", "segment", "cancel", "ping", "shutdown")
MAX_REQUEST_CHARS = 1 << 20
"""Longest request line; a longer one is skipped unparsed (requests hold paths and prompts only)."""
MAX_INPUT_KEY_CHARS = 200
"""Longest ``input_key`` of a segment request (the client's name for an input's current content)."""
_REPR = reprlib.Repr()  # a client's value in a message: nested and long values elided
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 2, 60, 60, 4, 4
shown = _REPR.repr


class RequestError(Exception):
    """An error answered with an ``error`` event of the given protocol code (and request id, if known)."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


def parse_request(line: str) -> dict[str, Any]:
    """Parse and check one request line (id, type, a cancel's target); raises RequestError("bad_request").

    The error carries the request's id once the line is a JSON object with a valid id.
    """
    try:
        request = json.loads(line)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, a too-long integer, too deep nesting
        raise RequestError("bad_request", f"malformed JSON request line ({str(error)[:120]}): send one "
                                          "JSON object per line") from None
    if not isinstance(request, dict):
        raise RequestError("bad_request", f"a request must be a JSON object, got {type(request).__name__}")
    request_id = request.get("id")
    if not isinstance(request_id, str) or not request_id:
        raise RequestError("bad_request", f"a request needs a non-empty string 'id', got {shown(request_id)}")
    if not isinstance(request.get("type"), str) or request["type"] not in _REQUEST_TYPES:
        raise RequestError("bad_request", f"request type must be one of {', '.join(_REQUEST_TYPES)}, "
                                          f"got {shown(request.get('type'))}", request_id)
    target = request.get("target")
    if request["type"] == "cancel" and (not isinstance(target, str) or not target):
        raise RequestError("bad_request", f"cancel needs 'target', the string id of a running or queued request, "
                                          f"got {shown(target)}", request_id)
    return request


def input_key(request: dict[str, Any]) -> str | None:
    """A segment request's optional ``input_key`` (see PROTOCOL.md); raises RequestError("bad_request")."""
    key = request.get("input_key")
    if key is not None and (not isinstance(key, str) or not key or len(key) > MAX_INPUT_KEY_CHARS):
        raise RequestError("bad_request", f"'input_key' must be a non-empty string of at most {MAX_INPUT_KEY_CHARS} "
                                          f"characters, got {shown(key)}")
    return key


def request_lines(stream: IO[str]) -> Iterator[str | None]:
    """The stream's lines, each at most MAX_REQUEST_CHARS long; None for a longer line (skipped)."""
    while line := stream.readline(MAX_REQUEST_CHARS + 1):
        if len(line) <= MAX_REQUEST_CHARS or line.endswith("\n"):
            yield line
            continue
        while (rest := stream.readline(MAX_REQUEST_CHARS)) and not rest.endswith("\n"):
            pass
        yield None


def request_clicks(request: dict[str, Any], prompts: list[str]) -> list[list[RequestClick]] | None:
    """A segment request's optional `clicks` (tevia.volume.clicks); malformed ones are a bad_request."""
    if request.get("clicks") is None:
        return None
    try:
        return parse_clicks(request["clicks"], len(prompts))
    except ValueError as error:
        raise RequestError("bad_request", f"bad clicks: {error}") from error
