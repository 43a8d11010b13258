"""The FastAPI application: /v1/health, /v1/info, /v1/segment.

`create_app(segmenter, settings)` builds it; `tevia serve` runs it on uvicorn, and tests
build it directly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from tevia.device import is_out_of_memory
from tevia.pipeline import Cancelled
from tevia.server.auth import bearer_matches
from tevia.server.engine import SegmentationService
from tevia.server.jobs import InferenceQueue, QueueFull
from tevia.server.settings import ServerSettings
from tevia.server.upload import UploadError, read_segment_form
from tevia.server.volume_io import VolumeError, VolumeTooLargeError, read_uploaded_volume, write_labelmap

__all__ = ["create_app", "LABELS_HEADER", "OPEN_PATHS"]

logger = logging.getLogger(__name__)

LABELS_HEADER = "X-TeViA-Labels"
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


def _prompts(texts: list[str], settings: ServerSettings) -> list[str]:
    if not texts:
        raise HTTPException(422, "no `text` field: send one or more prompts, e.g. text=liver")
    prompts = [text.strip() for text in texts]
    for index, prompt in enumerate(prompts):
        if not prompt:
            raise HTTPException(422, f"`text` field {index + 1} is empty; every prompt needs some words")
        if len(prompt) > settings.max_prompt_chars:
            raise HTTPException(422, f"`text` field {index + 1} has {len(prompt)} characters; the limit is "
                                     f"{settings.max_prompt_chars}")
        if any(ord(ch) < 32 for ch in prompt):
            raise HTTPException(422, f"`text` field {index + 1} holds control characters; send plain text")
    return prompts


def _options(raw: str | None) -> dict[str, Any]:
    if raw is None or not raw.strip():
        return {}
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as error:
        raise HTTPException(422, f"the `options` field is not valid JSON ({error.msg} at character "
                                 f"{error.pos}); send a JSON object such as {{\"threshold\": 0.5}}") from None
    if not isinstance(options, dict):
        raise HTTPException(422, f"the `options` field must be a JSON object, got {type(options).__name__}")
    return options


def _labels_header(result: Any) -> str:
    payload = {
        "labels": {str(label): prompt for label, prompt in result.labels.items()},
        "prompts": result.prompts,
        "warnings": result.warnings,
        "voxels": result.voxels,
        "timings": {name: round(float(value), 4) for name, value in result.timings.items()},
    }
    return json.dumps(payload, ensure_ascii=True, separators=(",", ":"), default=str)


def _make_temp_root(settings: ServerSettings) -> tuple[Path, bool]:
    if settings.temp_dir is None:
        return Path(tempfile.mkdtemp(prefix="tevia-serve-")), True
    root = Path(settings.temp_dir)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return root, False


def create_app(segmenter: Any, settings: ServerSettings | None = None) -> FastAPI:
    """Build the server application around a loaded model.

    Args:
        segmenter: a loaded `tevia.inference.Segmenter`; only the app's inference thread uses it.
        settings: token and limits (default: ServerSettings(), i.e. no token: use it only on
            127.0.0.1; `tevia serve` enforces that rule).

    Returns:
        The FastAPI app. `app.state.queue` is its InferenceQueue, `app.state.temp_root` its
        temporary folder; both are released when the app shuts down.
    """
    settings = settings or ServerSettings()
    service = SegmentationService(segmenter, settings.feature_cache_bytes)
    temp_root, owns_temp_root = _make_temp_root(settings)
    queue = InferenceQueue(settings.queue_limit)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        queue.stop()
        if owns_temp_root:
            shutil.rmtree(temp_root, ignore_errors=True)

    app = FastAPI(title="TeViA inference server", version=service.info()["version"], lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.queue = queue
    app.state.temp_root = temp_root
    app.state.settings = settings
    app.add_middleware(_Guard, token=settings.token, max_body_bytes=settings.max_upload_bytes)

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "busy": queue.busy, "waiting": queue.waiting}

    @app.get("/v1/info")
    async def info() -> dict[str, Any]:
        limits = {"max_upload_bytes": settings.max_upload_bytes, "max_prompts": settings.max_prompts,
                  "max_prompt_chars": settings.max_prompt_chars, "max_voxels": settings.max_voxels,
                  "queue_limit": settings.queue_limit, "request_timeout": settings.request_timeout}
        return {**service.info(), "limits": limits}

    @app.post("/v1/segment")
    async def segment(request: Request) -> Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.request_timeout
        folder = Path(tempfile.mkdtemp(prefix="request-", dir=temp_root))
        try:
            try:
                image, prompts, options = await _read_request(request, folder, settings, service)
            except ClientDisconnect:
                logger.info("client disconnected during the upload")
                return Response(status_code=499)
            started = time.perf_counter()
            try:
                job = queue.submit(lambda cancelled: service.run(image, prompts, options, cancelled))
            except QueueFull as error:
                raise HTTPException(503, str(error), headers={"Retry-After": str(error.retry_after)}) from None
            result = await _wait(queue, job, request, deadline, settings.request_timeout)
            if result is None:
                return Response(status_code=499)
            output = folder / "labelmap.nii.gz"
            await run_in_threadpool(write_labelmap, result.labelmap, output)
            body = output.read_bytes()
            logger.info("segmented a %s volume for %d prompt(s) in %.2f s", "x".join(map(str, image.GetSize())),
                        len(prompts), time.perf_counter() - started)
            return Response(body, media_type="application/gzip",
                            headers={LABELS_HEADER: _labels_header(result),
                                     "Content-Disposition": 'attachment; filename="labelmap.nii.gz"'})
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    return app


async def _read_request(request: Request, folder: Path, settings: ServerSettings,
                        service: SegmentationService) -> tuple[Any, list[str], Any]:
    """Read and validate a /v1/segment request: (ITK image in LPS, prompts, SegmentOptions).

    The upload is written into `folder` and deleted once read.

    Raises:
        HTTPException: 408, 413 or 422 with a message saying what was wrong.
        ClientDisconnect: the client went away during the upload.
    """
    try:
        form = await asyncio.wait_for(read_segment_form(
            request.stream(), request.headers.get("content-type"), folder,
            max_body_bytes=settings.max_upload_bytes, max_prompt_chars=settings.max_prompt_chars,
            max_prompts=settings.max_prompts), timeout=settings.request_timeout)
    except UploadError as error:
        raise HTTPException(error.status, error.message) from None
    except asyncio.TimeoutError:
        raise HTTPException(408, f"the upload did not finish within the server's request timeout "
                                 f"({settings.request_timeout:.0f} s)") from None
    if form.volume is None or form.volume_bytes == 0:
        raise HTTPException(422, "no `volume` file: send the volume as a NRRD or NIfTI file in the `volume` field")
    prompts = _prompts(form.texts, settings)
    try:
        options = service.parse_options(_options(form.options))
    except ValueError as error:
        raise HTTPException(422, f"bad `options`: {error}") from None
    try:
        image = await run_in_threadpool(read_uploaded_volume, form.volume, settings.max_voxels)
    except VolumeTooLargeError as error:
        raise HTTPException(413, str(error)) from None
    except VolumeError as error:
        raise HTTPException(422, str(error)) from None
    finally:
        for upload in folder.iterdir():
            upload.unlink()
    return image, prompts, options


async def _wait(queue: InferenceQueue, job: Any, request: Request, deadline: float, timeout: float) -> Any:
    """The job's result; None when the client went away; HTTPException on timeout or failure."""
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
    if isinstance(error, ValueError):
        raise HTTPException(422, f"the volume or prompts cannot be segmented: {error}")
    if is_out_of_memory(error):
        raise HTTPException(503, "the server ran out of GPU memory on this volume; retry later or send a smaller "
                                 "volume", headers={"Retry-After": str(queue.retry_after())})
    logger.error("segmentation failed", exc_info=error)
    raise HTTPException(500, f"the segmentation failed on the server ({type(error).__name__}: {error})")
