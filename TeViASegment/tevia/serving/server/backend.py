"""Where the server segments a checked request: its own inference thread, or model replicas.

The FastAPI app (tevia.serving.server.app) reads, checks and admits a /v1/segment request the
same way whatever runs the model; a `Backend` runs it. `LocalBackend` is the single process of
`tevia serve`: one inference thread and its bounded queue (tevia.serving.server.jobs). The Ray
replicas of `tevia serve --replicas N` (tevia.serving.replicas) are another backend behind the
same app. Both answer errors through `http_error`, so a client sees the same statuses either way.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import HTTPException, Request

from tevia.device import is_out_of_memory
from tevia.inference.pipeline import Cancelled
from tevia.inference.segment_options import SegmentOptions
from tevia.serving.server.engine import SegmentationService
from tevia.serving.server.jobs import InferenceQueue, QueueFull
from tevia.serving.server.tempfiles import RequestFolder
from tevia.serving.server.volume_io import UploadedVolume, VolumeTooLargeError, public_message
from tevia.volume.clicks import RequestClick
from tevia.volume.errors import InputError

if TYPE_CHECKING:
    from tevia.inference.segmenter import Segmenter

__all__ = ["Answer", "Backend", "LocalBackend", "SegmentRequest", "http_error", "wait_for_answer"]

logger = logging.getLogger(__name__)

Answer = tuple[dict[str, Any], bytes]
"""A segmentation's answer: (summary of labels, prompts, warnings, ...; the labelmap as .nii.gz bytes)."""
_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class SegmentRequest:
    """A /v1/segment request that passed every check: its upload on disk, prompts, options, clicks."""

    volume: UploadedVolume
    prompts: list[str]
    options: SegmentOptions
    clicks: list[list[RequestClick]] | None
    folder: RequestFolder


class Backend(Protocol):
    """What runs the model for the app."""

    async def info(self) -> dict[str, Any]:
        """The served model (tevia.serving.server.engine.SegmentationService.info)."""

    def health(self) -> dict[str, Any]:
        """`busy` and `waiting` for /v1/health (more fields allowed)."""

    def retry_after(self) -> int:
        """Seconds a refused client should wait before trying again."""

    async def segment(self, request: SegmentRequest, http_request: Request, deadline: float) -> Answer | None:
        """The answer; None when the client went away; HTTPException for a refused or failed request.

        The backend removes `request.folder` once nothing uses it any more.
        """

    def stop(self) -> None:
        """Release what the backend holds (the app is shutting down)."""


def http_error(error: BaseException, retry_after: int) -> HTTPException | None:
    """The HTTP answer to a failed segmentation; None for a cancelled one (the client is gone).

    Messages carry no server path (tevia.serving.server.volume_io.public_message).
    """
    if isinstance(error, HTTPException):
        return error
    if isinstance(error, Cancelled):
        return None
    if isinstance(error, QueueFull):
        return HTTPException(503, str(error), headers={"Retry-After": str(error.retry_after)})
    if isinstance(error, VolumeTooLargeError):
        return HTTPException(413, public_message(str(error)))
    if isinstance(error, InputError):  # messages written for the user: a truncated file, a repeated prompt
        return HTTPException(422, public_message(str(error)))
    if isinstance(error, ValueError):
        return HTTPException(422, f"the volume or prompts cannot be segmented: {public_message(str(error))}")
    if isinstance(error, MemoryError) or is_out_of_memory(error):  # on the CPU: a GPU's fell back to it
        return HTTPException(503, "the server ran out of memory on this volume; retry later or send a smaller "
                                  "volume", headers={"Retry-After": str(retry_after)})
    logger.error("segmentation failed", exc_info=error)
    return HTTPException(500, f"the segmentation failed on the server ({type(error).__name__}); the server's log "
                              f"has the details")


async def wait_for_answer(waiter: Awaitable[Any], cancel: Callable[[], None], http_request: Request,
                          deadline: float, timeout: float, retry_after: Callable[[], int]) -> Any:
    """Wait for `waiter` while watching the deadline and the client's connection.

    Returns:
        The waiter's result; None when the client disconnected or the work was cancelled
        (`cancel()` was called for a disconnect).

    Raises:
        HTTPException: 504 past the deadline (after `cancel()`), 503 when the waiter was
            cancelled by a shutdown, or the waiter's error as `http_error` answers it.
    """
    loop = asyncio.get_running_loop()
    waiter = asyncio.ensure_future(waiter)
    while not waiter.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            cancel()
            raise HTTPException(504, f"the segmentation did not finish within the server's request timeout "
                                     f"({timeout:.0f} s); try fewer prompts or a smaller volume")
        await asyncio.wait({waiter}, timeout=min(_POLL_SECONDS, remaining))
        if not waiter.done() and await http_request.is_disconnected():
            cancel()
            logger.info("client disconnected; its request was cancelled")
            return None
    if waiter.cancelled():
        raise HTTPException(503, "the server is shutting down; retry later", headers={"Retry-After": "30"})
    error = waiter.exception()
    if error is None:
        return waiter.result()
    answer = http_error(error, retry_after())
    if answer is None:
        return None
    raise answer


class LocalBackend:
    """The model in this process: one inference thread, at most `settings.queue_limit` waiting.

    Args:
        segmenter: a loaded model; only the inference thread uses it.
        feature_cache_bytes: bound of the image-feature cache.
        queue_limit: requests that may wait behind the running one (503 beyond).
        request_timeout: seconds per request (for the 504 message).
    """

    def __init__(self, segmenter: Segmenter, feature_cache_bytes: int, queue_limit: int,
                 request_timeout: float) -> None:
        self.service = SegmentationService(segmenter, feature_cache_bytes)
        self.queue = InferenceQueue(queue_limit)
        self.request_timeout = request_timeout

    async def info(self) -> dict[str, Any]:
        return self.service.info()

    def health(self) -> dict[str, Any]:
        return {"busy": self.queue.busy, "waiting": self.queue.waiting}

    def retry_after(self) -> int:
        return self.queue.retry_after()

    async def segment(self, request: SegmentRequest, http_request: Request, deadline: float) -> Answer | None:
        try:
            job = self.queue.submit(functools.partial(self.service.segment, request.volume, request.prompts,
                                                      request.options, request.folder, clicks=request.clicks))
        except QueueFull as error:
            request.folder.remove()
            raise http_error(error, error.retry_after) from None
        # the inference thread may still use the folder after a cancel: remove it once the job is over
        job.future.add_done_callback(lambda _: request.folder.remove())
        return await wait_for_answer(asyncio.wrap_future(job.future), lambda: self.queue.cancel(job), http_request,
                                     deadline, self.request_timeout, self.queue.retry_after)

    def stop(self) -> None:
        self.queue.stop()
