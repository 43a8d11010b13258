"""Streaming multipart/form-data reader for POST /v1/segment.

The volume part streams into a file the server names inside its own temporary folder (the
client's file name is never used); text fields are bounded; the whole body is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

__all__ = ["UploadError", "SegmentForm", "read_segment_form", "VOLUME_FIELD", "TEXT_FIELD", "OPTIONS_FIELD",
           "CLICKS_FIELD"]

VOLUME_FIELD, TEXT_FIELD, OPTIONS_FIELD, CLICKS_FIELD = "volume", "text", "options", "clicks"
_MAX_OPTIONS_BYTES = 64 * 1024
_MAX_CLICKS_BYTES = 256 * 1024  # 1000 clicks (tevia.volume.clicks.MAX_CLICKS) of about 60 bytes each, with room
_MAX_PARTS = 256
_DRAIN_SECONDS = 10.0
_EXPECTED = "expected multipart/form-data with a `volume` file (NRRD or NIfTI), one or more `text` fields, " \
            "an optional `options` JSON field and an optional `clicks` JSON field"


class UploadError(Exception):
    """A request body the server refuses; `status` is the HTTP status to answer (413 or 422)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class SegmentForm:
    """The fields of one /v1/segment request.

    Attributes:
        volume: the uploaded volume's bytes as written by the server (None if absent).
        volume_bytes: its size in bytes.
        texts: the `text` fields in order, decoded as UTF-8.
        options: the raw `options` field, or None.
        clicks: the raw `clicks` field, or None.
    """

    volume: Path | None = None
    volume_bytes: int = 0
    texts: list[str] = field(default_factory=list)
    options: str | None = None
    clicks: str | None = None


class _Reader:
    """Callbacks for python-multipart's MultipartParser, with size and field checks."""

    def __init__(self, folder: Path, max_text_bytes: int, max_prompts: int) -> None:
        self.form = SegmentForm()
        self._folder = folder
        self._max_text_bytes = max_text_bytes
        self._max_prompts = max_prompts
        self._parts = 0
        self._header_name = b""
        self._header_value = b""
        self._disposition: bytes | None = None
        self._name = ""
        self._buffer = bytearray()
        self._limit = 0
        self._file: BinaryIO | None = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value_data, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > _MAX_PARTS:
            raise UploadError(422, f"too many form fields (more than {_MAX_PARTS}); {_EXPECTED}")
        self._disposition, self._name = None, ""
        self._buffer = bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        if self._disposition is None:
            raise UploadError(422, f"a form part has no Content-Disposition header; {_EXPECTED}")
        _, params = parse_options_header(self._disposition)
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        if self._name == VOLUME_FIELD:
            if self.form.volume is not None:
                raise UploadError(422, "more than one `volume` field; send exactly one volume per request")
            self.form.volume = self._folder / "volume.upload"
            self._file = open(self.form.volume, "xb")
        elif self._name == TEXT_FIELD:
            if len(self.form.texts) >= self._max_prompts:
                raise UploadError(422, f"more than {self._max_prompts} `text` fields; split the prompts "
                                       f"over several requests")
            self._limit = self._max_text_bytes
        elif self._name in (OPTIONS_FIELD, CLICKS_FIELD):
            if getattr(self.form, self._name) is not None:
                raise UploadError(422, f"more than one `{self._name}` field; send one JSON value")
            self._limit = _MAX_OPTIONS_BYTES if self._name == OPTIONS_FIELD else _MAX_CLICKS_BYTES
        else:
            raise UploadError(422, f"unknown form field {self._name[:40]!r}; {_EXPECTED}")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self._file.write(data[start:end])
            self.form.volume_bytes += end - start
            return
        self._buffer += data[start:end]
        if len(self._buffer) > self._limit:
            raise UploadError(422, f"the `{self._name}` field is longer than {self._limit} bytes")

    def _part_end(self) -> None:
        if self._file is not None:
            self.close()
            return
        try:
            text = self._buffer.decode("utf-8")
        except UnicodeDecodeError:
            raise UploadError(422, f"the `{self._name}` field is not valid UTF-8 text") from None
        if self._name == TEXT_FIELD:
            self.form.texts.append(text)
        else:
            setattr(self.form, self._name, text)


async def read_segment_form(
    chunks: AsyncIterator[bytes],
    content_type: str | None,
    folder: Path,
    *,
    max_body_bytes: int,
    max_prompt_chars: int,
    max_prompts: int,
) -> SegmentForm:
    """Read a /v1/segment body, writing the volume to `folder`/volume.upload.

    Args:
        chunks: the request body as it arrives.
        content_type: the request's Content-Type header.
        folder: an empty folder of the server's own temporary folder.
        max_body_bytes: the body limit (413 beyond it, checked while reading).
        max_prompt_chars: longest `text` field in characters.
        max_prompts: most `text` fields.

    Raises:
        UploadError: 413 for a body over the limit, 422 for a malformed form (the rest of
            the body is read and dropped first, within limits, so the client sees the answer).
        starlette.requests.ClientDisconnect: the client went away.
    """
    reader: _Reader | None = None
    received = 0
    try:
        kind, params = parse_options_header(content_type or "")
        if kind != b"multipart/form-data" or not params.get(b"boundary"):
            raise UploadError(422, f"Content-Type is {content_type!r}; {_EXPECTED}")
        reader = _Reader(folder, max_text_bytes=4 * max_prompt_chars, max_prompts=max_prompts)
        parser = MultipartParser(params[b"boundary"], reader.callbacks())
        async for chunk in chunks:
            received += len(chunk)
            if received > max_body_bytes:
                raise UploadError(413, f"the request body is larger than the server's limit of "
                                       f"{max_body_bytes / 2**20:.0f} MB")
            parser.write(chunk)
        parser.finalize()
    except FormParserError as error:
        await _drain(chunks, max_body_bytes)
        raise UploadError(422, f"malformed multipart body ({error}); {_EXPECTED}") from None
    except UploadError:
        await _drain(chunks, max_body_bytes)
        raise
    finally:
        if reader is not None:
            reader.close()
    return reader.form


async def _drain(chunks: AsyncIterator[bytes], max_bytes: int) -> None:
    """Read and drop the rest of a refused body (at most `max_bytes`, `_DRAIN_SECONDS`), so that
    the client, still sending, reads the error answer instead of a reset connection."""

    async def drop() -> None:
        dropped = 0
        async for chunk in chunks:
            dropped += len(chunk)
            if dropped > max_bytes:
                return

    try:
        await asyncio.wait_for(drop(), timeout=_DRAIN_SECONDS)
    except (asyncio.TimeoutError, ClientDisconnect):
        pass
