"""The ingress side of `tevia serve --replicas N`: admitted requests sent to the model replicas.

A `ReplicaBackend` is a tevia.serving.server.backend.Backend over a Ray Serve handle to
tevia.serving.replicas.ModelReplica. It sends the checked upload's bytes with the file's
SHA-256 as the multiplexed model id (affinity: the replica holding that volume's features gets
it), answers 503 with Retry-After when `queue_limit` requests wait for a replica already, and
when the replica running a request dies, sends the request once more (Serve restarts the
replica; another one may answer) and answers 503 if that fails too: no request is lost
without an answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.concurrency import run_in_threadpool

from tevia.inference.segment_options import SegmentOptions
from tevia.serving.server.backend import Answer, SegmentRequest, wait_for_answer
from tevia.serving.server.settings import ServerSettings
from tevia.volume.clicks import RequestClick

__all__ = ["ReplicaBackend", "ReplicaRequest", "ReplicaAnswer", "volume_id"]

logger = logging.getLogger(__name__)

_REPLICA_GONE = (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError)
_ATTEMPTS = 2
_RESTART_SECONDS = 30


@dataclass(frozen=True)
class ReplicaRequest:
    """What the ingress sends a replica: the checked upload's bytes and what to do with them."""

    data: bytes
    suffix: str
    size: tuple[int, ...]
    prompts: list[str]
    options: SegmentOptions
    clicks: list[list[RequestClick]] | None


@dataclass(frozen=True)
class ReplicaAnswer:
    """A replica's answer: status 200 with the summary and the labelmap, else the HTTP error."""

    status: int
    summary: dict[str, Any] | None = None
    labelmap: bytes | None = None
    detail: str = ""
    headers: dict[str, str] | None = None


def volume_id(data: bytes) -> str:
    """The routing key of an uploaded volume: the SHA-256 of its bytes (hex)."""
    return hashlib.sha256(data).hexdigest()


class ReplicaBackend:
    """Segments admitted requests on the model replicas behind a Serve handle.

    Args:
        handle: DeploymentHandle of tevia.serving.replicas.ModelReplica.
        settings: the server's settings (queue limit, request timeout).
        replicas: how many model replicas there are (for /v1/health and Retry-After).
            /v1/health also counts the requests `resent` after their replica died.
        affinity: send the volume's hash as the multiplexed model id (False: route every
            request as Serve's default router does; for comparisons).
    """

    def __init__(self, handle: Any, settings: ServerSettings, replicas: int, affinity: bool = True) -> None:
        self.handle = handle
        self.settings = settings
        self.replicas = replicas
        self.affinity = affinity
        self.in_flight = 0
        self.resent = 0
        self._mean_seconds = 5.0
        self._info: dict[str, Any] | None = None

    async def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = {**await self.handle.info.remote(), "replicas": self.replicas}
        return self._info

    def health(self) -> dict[str, Any]:
        return {"busy": self.in_flight > 0, "waiting": max(0, self.in_flight - self.replicas),
                "replicas": self.replicas, "resent": self.resent}

    def stop(self) -> None:
        """Nothing to release: the replicas stop with the Serve application."""

    def retry_after(self) -> int:
        rounds = max(1, math.ceil(self.in_flight / self.replicas))
        return int(min(600, max(1, math.ceil(self._mean_seconds * rounds))))

    async def segment(self, request: SegmentRequest, http_request: Request, deadline: float) -> Answer | None:
        try:
            data = await run_in_threadpool(request.volume.path.read_bytes)
        finally:  # the bytes travel to the replica; nothing stays on the ingress's disk
            request.folder.remove()
        payload = ReplicaRequest(data, "".join(request.volume.path.suffixes), request.volume.size, request.prompts,
                                 request.options, request.clicks)
        task = asyncio.ensure_future(self._call(payload, volume_id(data) if self.affinity else ""))
        self.in_flight += 1
        try:
            return await wait_for_answer(task, task.cancel, http_request, deadline, self.settings.request_timeout,
                                         self.retry_after)
        finally:
            self.in_flight -= 1

    async def _call(self, payload: ReplicaRequest, key: str) -> Answer | None:
        """One request on a replica, sent again once if that replica dies while holding it."""
        handle = self.handle.options(multiplexed_model_id=key) if key else self.handle
        attempt = 0
        while True:
            attempt += 1
            began = time.perf_counter()
            response = handle.segment.remote(payload)
            try:
                answer: ReplicaAnswer = await response
            except asyncio.CancelledError:
                response.cancel()
                raise
            except BackPressureError:
                raise HTTPException(503, f"the server is busy: {self.settings.queue_limit} requests are waiting for "
                                         f"its {self.replicas} model replica(s); retry in {self.retry_after()} s",
                                    headers={"Retry-After": str(self.retry_after())}) from None
            except _REPLICA_GONE as error:
                if attempt < _ATTEMPTS:
                    self.resent += 1
                    logger.warning("the model replica segmenting a request stopped (%s); sending it again",
                                   type(error).__name__)
                    continue
                logger.error("the model replica stopped again on the same request (%s)", type(error).__name__)
                raise HTTPException(503, "the model replica segmenting this request stopped, and so did the "
                                         "one it was sent to again; the server restarts them: retry in "
                                         f"{_RESTART_SECONDS} s", headers={"Retry-After": str(_RESTART_SECONDS)}
                                    ) from None
            if answer.status == 499:
                return None
            if answer.status != 200:
                raise HTTPException(answer.status, answer.detail, headers=answer.headers)
            self._mean_seconds = 0.7 * self._mean_seconds + 0.3 * (time.perf_counter() - began)
            return answer.summary, answer.labelmap
