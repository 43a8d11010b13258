"""Checks of a /v1/segment request's `text`, `options` and `clicks` fields, before any voxel is read.

`clicks` takes exactly what the worker protocol's `clicks` takes (TeViASegment/tevia/PROTOCOL.md),
checked by the same code (tevia.volume.clicks.parse_clicks).
"""

from __future__ import annotations

import json
from typing import Any

from tevia.inference.pipeline import SegmentOptions
from tevia.serving.server.settings import ServerSettings
from tevia.serving.server.upload import UploadError
from tevia.volume.clicks import RequestClick, parse_clicks

__all__ = ["prompts_from", "options_from", "clicks_from"]

_SCALARS = (str, int, float, bool, type(None))
_MAX_LIST = 16
_MAX_DETAIL = 300
_EXAMPLE = '{"threshold": 0.5, "window": [40, 400]}'
_CLICKS_EXAMPLE = '[[{"ras": [-80.5, 12.0, -301.2], "positive": true}], []]'


def prompts_from(texts: list[str], settings: ServerSettings) -> list[str]:
    """The prompts, stripped.

    Raises:
        UploadError: 422 for no prompt, an empty or too long one, or control characters.
    """
    if not texts:
        raise UploadError(422, "no `text` field: send one or more prompts, e.g. text=liver")
    prompts = [text.strip() for text in texts]
    for index, prompt in enumerate(prompts):
        if not prompt:
            raise UploadError(422, f"`text` field {index + 1} is empty; every prompt needs some words")
        if len(prompt) > settings.max_prompt_chars:
            raise UploadError(422, f"`text` field {index + 1} has {len(prompt)} characters; the limit is "
                                   f"{settings.max_prompt_chars}")
        if any(ord(ch) < 32 for ch in prompt):
            raise UploadError(422, f"`text` field {index + 1} holds control characters; send plain text")
    return prompts


def _is_flat(value: Any) -> bool:
    """A JSON scalar, or a short list of scalars: the only shapes an option takes."""
    if isinstance(value, _SCALARS):
        return True
    return isinstance(value, list) and len(value) <= _MAX_LIST and all(isinstance(v, _SCALARS) for v in value)


def _json_field(raw: str, name: str, expected: str) -> Any:
    """The JSON value of the form field `name`.

    Raises:
        UploadError: 422 when it is not JSON or nests too deeply, saying to send `expected`.
    """
    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        raise UploadError(422, f"the `{name}` field is not valid JSON ({error.msg} at character {error.pos}); "
                               f"send {expected}") from None
    except RecursionError:
        raise UploadError(422, f"the `{name}` field nests too deeply; send {expected}") from None


def options_from(raw: str | None) -> SegmentOptions:
    """The `options` field as SegmentOptions, every option's type and range checked.

    Raises:
        UploadError: 422 saying which option is wrong and what it must be.
    """
    if raw is None or not raw.strip():
        return SegmentOptions()
    values = _json_field(raw, "options", f"a flat JSON object such as {_EXAMPLE}")
    if not isinstance(values, dict):
        raise UploadError(422, f"the `options` field must be a JSON object, got {type(values).__name__}")
    for key, value in values.items():
        if not _is_flat(value):
            raise UploadError(422, f"bad `options`: {key[:40]!r} must be a number, text, true/false or a list "
                                   f"of at most {_MAX_LIST} numbers, got a nested {type(value).__name__}")
    try:
        return SegmentOptions.from_dict(values)
    except ValueError as error:
        raise UploadError(422, f"bad `options`: {str(error)[:_MAX_DETAIL]}") from None


def clicks_from(raw: str | None, prompt_count: int) -> list[list[RequestClick]] | None:
    """The `clicks` field (one list of clicks per prompt, as in the worker protocol), or None when absent.

    Raises:
        UploadError: 422 for a field that is not JSON or not clicks, naming the click that is wrong.
    """
    if raw is None or not raw.strip():
        return None
    values = _json_field(raw, "clicks", f"one list of clicks per prompt, such as {_CLICKS_EXAMPLE}")
    try:
        return parse_clicks(values, prompt_count)
    except ValueError as error:
        raise UploadError(422, f"bad `clicks`: {str(error)[:_MAX_DETAIL]}") from None
