"""The FastAPI application: /v1/health, /v1/info, /v1/segment.

`create_app(segmenter, settings)` builds it over this process's inference thread; `tevia serve`
runs it on uvicorn (see `tevia.serving.server.transport`), and tests build it directly.
`build_app(backend, settings)` builds the same routes over another backend
(tevia.serving.server.backend): `tevia serve --replicas N` runs them on Ray Serve.

A /v1/segment request goes: token and Content-Length checks (`_Guard`), an upload slot
(`max_uploads`, 503 beyond), the body streamed to disk, prompts and options checked, the
volume's header checked against the voxel and memory limits, a place in the queue (503
beyond `queue_limit`), then, on the inference thread, the voxels decoded, segmented and the
labelmap encoded. Only then is a volume in memory, one at a time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from tevia import __version__
from tevia.inference.segment_options import SegmentOptions
from tevia.serving.server.auth import bearer_matches
from tevia.serving.server.backend import Backend, LocalBackend, SegmentRequest
from tevia.serving.server.engine import API_VERSION
from tevia.serving.server.settings import ServerSettings
from tevia.serving.server.tempfiles import RequestFolder, open_temp_root, remove_path
from tevia.serving.server.upload import UploadError, read_segment_form
from tevia.serving.server.validation import clicks_from, options_from, prompts_from
from tevia.serving.server.volume_io import UploadedVolume, VolumeError, VolumeTooLargeError, inspect_upload
from tevia.volume.clicks import RequestClick

if TYPE_CHECKING:
    from tevia.inference.segmenter import Segmenter

__all__ = ["create_app", "build_app", "OPEN_PATHS"]

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/v1/health"})


class _Guard:
    """ASGI middleware that answers before any body is read: 401 without the right bearer
    token, 413 when Content-Length already exceeds the upload limit."""

    def __init__(self, app: ASGIApp, token: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.token is not None and scope["path"] not in OPEN_PATHS \
                and not bearer_matches(headers.get("authorization"), self.token):
            detail = ("missing or wrong token: send the server's token as 'Authorization: Bearer <token>'"
                      if headers.get("authorization") else
                      "this server requires a token: send 'Authorization: Bearer <token>'")
            await JSONResponse({"detail": detail}, 401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                await JSONResponse({"detail": f"bad Content-Length {length[:20]!r}"}, 400)(scope, receive, send)
                return
            if int(length) > self.max_body_bytes:
                detail = (f"the request body ({int(length) / 2**20:.1f} MB) is larger than the server's limit of "
                          f"{self.max_body_bytes / 2**20:.0f} MB")
                await JSONResponse({"detail": detail}, 413)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _answer_body(summary: dict[str, Any], labelmap: bytes) -> bytes:
    """The JSON answer of API version 2: the summary and the labelmap (.nii.gz, base64)."""
    encoded = base64.b64encode(labelmap).decode("ascii")
    answer = {"api": API_VERSION, **summary, "labelmap": {"format": "nii.gz", "encoding": "base64", "data": encoded}}
    return json.dumps(answer, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


def create_app(segmenter: Segmenter, settings: ServerSettings | None = None) -> FastAPI:
    """Build the server application around a loaded model.

    Args:
        segmenter: a loaded `tevia.inference.segmenter.Segmenter`; only the app's inference thread uses it (through
            a tevia.inference.session.InferenceSession, which moves it to the CPU on a GPU out-of-memory).
        settings: token and limits (default: ServerSettings(), i.e. no token: use it only on
            127.0.0.1; `tevia serve` enforces that rule).

    Returns:
        The FastAPI app. `app.state.queue` is its InferenceQueue, `app.state.temp_root` its
        temporary folder (both released when the app shuts down), `app.state.uploads` the
        semaphore of upload slots.

    Raises:
        ValueError: `settings.temp_dir` is not a private folder of this user (see
            tevia.serving.server.tempfiles.open_temp_root).
    """
    settings = settings or ServerSettings()
    backend = LocalBackend(segmenter, settings.feature_cache_bytes, settings.queue_limit, settings.request_timeout)
    app = build_app(backend, settings)
    app.state.queue = backend.queue
    return app


def build_app(backend: Backend, settings: ServerSettings) -> FastAPI:
    """The server's routes, token check and limits over any backend (this process's inference
    thread, or tevia.serving.replicas' model replicas).

    Returns:
        The FastAPI app; `app.state.backend`, `app.state.temp_root`, `app.state.settings` and
        `app.state.uploads` (the semaphore of upload slots) are set.

    Raises:
        ValueError: `settings.temp_dir` is not a private folder of this user.
    """
    temp_root, owns_temp_root = open_temp_root(settings.temp_dir)
    uploads = asyncio.Semaphore(settings.max_uploads)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        backend.stop()
        if owns_temp_root:
            remove_path(temp_root)

    app = FastAPI(title="TeViA inference server", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.backend = backend
    app.state.temp_root = temp_root
    app.state.settings = settings
    app.state.uploads = uploads
    app.add_middleware(_Guard, token=settings.token, max_body_bytes=settings.max_upload_bytes)

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **backend.health()}

    @app.get("/v1/info")
    async def info() -> dict[str, Any]:
        limits = {"max_upload_bytes": settings.max_upload_bytes, "max_prompts": settings.max_prompts,
                  "max_prompt_chars": settings.max_prompt_chars, "max_voxels": settings.max_voxels,
                  "memory_budget_bytes": settings.memory_budget_bytes, "queue_limit": settings.queue_limit,
                  "max_uploads": settings.max_uploads, "request_timeout": settings.request_timeout}
        return {**await backend.info(), "limits": limits}

    @app.post("/v1/segment")
    async def segment(request: Request) -> Response:
        if uploads.locked():
            raise HTTPException(503, f"the server is receiving {settings.max_uploads} uploads already; retry "
                                     f"in a few seconds", headers={"Retry-After": str(backend.retry_after()),
                                                                   "Connection": "close"})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.request_timeout
        folder = RequestFolder(temp_root)
        try:
            async with uploads:
                try:
                    volume, prompts, options, clicks = await _admit(request, folder.path, settings)
                except ClientDisconnect:
                    logger.info("client disconnected during the upload")
                    folder.remove()
                    return Response(status_code=499)
        except BaseException:
            folder.remove()
            raise
        started = time.perf_counter()
        outcome = await backend.segment(SegmentRequest(volume, prompts, options, clicks, folder), request, deadline)
        if outcome is None:
            return Response(status_code=499)
        summary, labelmap = outcome
        logger.info("segmented a %s volume for %d prompt(s) in %.2f s", "x".join(map(str, volume.size)),
                    len(prompts), time.perf_counter() - started)
        return Response(_answer_body(summary, labelmap), media_type="application/json")

    return app


async def _admit(request: Request, folder: Path, settings: ServerSettings
                 ) -> tuple[UploadedVolume, list[str], SegmentOptions, list[list[RequestClick]] | None]:
    """Read a /v1/segment request and check it without decoding any voxel: (volume, prompts,
    options, clicks per prompt or None).

    The upload is written into `folder`; its header is read and checked against the voxel
    and memory limits.

    Raises:
        HTTPException: 408, 413 or 422 with a message saying what was wrong.
        ClientDisconnect: the client went away during the upload.
    """
    try:
        form = await asyncio.wait_for(read_segment_form(
            request.stream(), request.headers.get("content-type"), folder,
            max_body_bytes=settings.max_upload_bytes, max_prompt_chars=settings.max_prompt_chars,
            max_prompts=settings.max_prompts), timeout=settings.request_timeout)
        if form.volume is None or form.volume_bytes == 0:
            raise UploadError(422, "no `volume` file: send the volume as a NRRD or NIfTI file in the `volume` field")
        prompts = prompts_from(form.texts, settings)
        options = options_from(form.options)
        clicks = clicks_from(form.clicks, len(prompts))
    except UploadError as error:
        raise HTTPException(error.status, error.message) from None
    except asyncio.TimeoutError:
        raise HTTPException(408, f"the upload did not finish within the server's request timeout "
                                 f"({settings.request_timeout:.0f} s)") from None
    try:
        volume = await run_in_threadpool(inspect_upload, form.volume, settings.max_voxels,
                                         settings.memory_budget_bytes)
    except VolumeTooLargeError as error:
        raise HTTPException(413, str(error)) from None
    except VolumeError as error:
        raise HTTPException(422, str(error)) from None
    return volume, prompts, options, clicks
