"""The FastAPI application: /v1/health, /v1/info, /v1/segment.

`create_app(segmenter, settings)` builds it; `tevia serve` runs it on uvicorn (see
`tevia.serving.server.transport`), and tests build it directly.

A /v1/segment request goes: token and Content-Length checks (`_Guard`), an upload slot
(`max_uploads`, 503 beyond), the body streamed to disk, prompts and options checked, the
volume's header checked against the voxel and memory limits, a place in the queue (503
beyond `queue_limit`), then, on the inference thread, the voxels decoded, segmented and the
labelmap encoded. Only then is a volume in memory, one at a time.
"""

from __future__ import annotations

import asyncio
import base64
import functools
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
from tevia.device import is_out_of_memory
from tevia.inference.segment_options import SegmentOptions
from tevia.serving.server.auth import bearer_matches
from tevia.serving.server.engine import API_VERSION, SegmentationService
from tevia.serving.server.jobs import InferenceQueue, Job, QueueFull
from tevia.serving.server.settings import ServerSettings
from tevia.serving.server.tempfiles import RequestFolder, open_temp_root, remove_path
from tevia.serving.server.upload import UploadError, read_segment_form
from tevia.serving.server.validation import clicks_from, options_from, prompts_from
from tevia.serving.server.volume_io import UploadedVolume, VolumeError, VolumeTooLargeError, inspect_upload, public_message
from tevia.volume.clicks import RequestClick
from tevia.volume.errors import InputError
from tevia.inference.pipeline import Cancelled

if TYPE_CHECKING:
    from tevia.inference.segmenter import Segmenter

__all__ = ["create_app", "OPEN_PATHS"]

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/v1/health"})
_POLL_SECONDS = 0.25


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
    temp_root, owns_temp_root = open_temp_root(settings.temp_dir)
    service = SegmentationService(segmenter, settings.feature_cache_bytes)
    queue = InferenceQueue(settings.queue_limit)
    uploads = asyncio.Semaphore(settings.max_uploads)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        queue.stop()
        if owns_temp_root:
            remove_path(temp_root)

    app = FastAPI(title="TeViA inference server", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.queue = queue
    app.state.temp_root = temp_root
    app.state.settings = settings
    app.state.uploads = uploads
    app.add_middleware(_Guard, token=settings.token, max_body_bytes=settings.max_upload_bytes)

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "busy": queue.busy, "waiting": queue.waiting}

    @app.get("/v1/info")
    async def info() -> dict[str, Any]:
        limits = {"max_upload_bytes": settings.max_upload_bytes, "max_prompts": settings.max_prompts,
                  "max_prompt_chars": settings.max_prompt_chars, "max_voxels": settings.max_voxels,
                  "memory_budget_bytes": settings.memory_budget_bytes, "queue_limit": settings.queue_limit,
                  "max_uploads": settings.max_uploads, "request_timeout": settings.request_timeout}
        return {**service.info(), "limits": limits}

    @app.post("/v1/segment")
    async def segment(request: Request) -> Response:
        if uploads.locked():
            raise HTTPException(503, f"the server is receiving {settings.max_uploads} uploads already; retry "
                                     f"in a few seconds", headers={"Retry-After": str(queue.retry_after()),
                                                                   "Connection": "close"})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.request_timeout
        folder = RequestFolder(temp_root)
        job: Job | None = None
        try:
            async with uploads:
                try:
                    volume, prompts, options, clicks = await _admit(request, folder.path, settings)
                except ClientDisconnect:
                    logger.info("client disconnected during the upload")
                    return Response(status_code=499)
                try:
                    job = queue.submit(functools.partial(service.segment, volume, prompts, options, folder,
                                                         clicks=clicks))
                except QueueFull as error:
                    raise HTTPException(503, str(error), headers={"Retry-After": str(error.retry_after)}) from None
            started = time.perf_counter()
            outcome = await _wait(queue, job, request, deadline, settings.request_timeout)
            if outcome is None:
                return Response(status_code=499)
            summary, labelmap = outcome
            logger.info("segmented a %s volume for %d prompt(s) in %.2f s", "x".join(map(str, volume.size)),
                        len(prompts), time.perf_counter() - started)
            return Response(_answer_body(summary, labelmap), media_type="application/json")
        finally:
            if job is None:
                folder.remove()
            else:  # the inference thread may still use the folder: remove it once the job is over
                job.future.add_done_callback(lambda _: folder.remove())

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


async def _wait(queue: InferenceQueue, job: Job, request: Request, deadline: float, timeout: float) -> Any:
    """The job's result; None when the client went away; HTTPException on timeout or failure.

    Error messages carry no server path (tevia.serving.server.volume_io.public_message).
    """
    loop = asyncio.get_running_loop()
    waiter = asyncio.wrap_future(job.future)
    while not waiter.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            queue.cancel(job)
            raise HTTPException(504, f"the segmentation did not finish within the server's request timeout "
                                     f"({timeout:.0f} s); try fewer prompts or a smaller volume")
        await asyncio.wait({waiter}, timeout=min(_POLL_SECONDS, remaining))
        if not waiter.done() and await request.is_disconnected():
            queue.cancel(job)
            logger.info("client disconnected; its request was cancelled")
            return None
    if waiter.cancelled():
        raise HTTPException(503, "the server is shutting down; retry later", headers={"Retry-After": "30"})
    error = waiter.exception()
    if error is None:
        return waiter.result()
    if isinstance(error, Cancelled):
        return None
    if isinstance(error, VolumeTooLargeError):
        raise HTTPException(413, public_message(str(error)))
    if isinstance(error, InputError):  # messages written for the user: a truncated file, a repeated prompt
        raise HTTPException(422, public_message(str(error)))
    if isinstance(error, ValueError):
        raise HTTPException(422, f"the volume or prompts cannot be segmented: {public_message(str(error))}")
    if isinstance(error, MemoryError) or is_out_of_memory(error):  # on the CPU: a GPU's fell back to it
        raise HTTPException(503, "the server ran out of memory on this volume; retry later or send a smaller "
                                 "volume", headers={"Retry-After": str(queue.retry_after())})
    logger.error("segmentation failed", exc_info=error)
    raise HTTPException(500, f"the segmentation failed on the server ({type(error).__name__}); the server's log "
                             f"has the details")
