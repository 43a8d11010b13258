"""`tevia serve --replicas N`: the server's FastAPI app on Ray Serve, N model replicas behind it.

The ingress (`Ingress`, one Serve replica, no CPU reserved) is the app of `tevia serve`
(tevia.serving.server.app.build_app): the token check, the upload limits, the checks of
prompts, options, clicks and the volume's header are the same code. It hands each admitted
request to the model replicas through `tevia.serving.replica_backend.ReplicaBackend`.

Each `ModelReplica` loads the model once and segments one request at a time on its own
inference thread (tevia.serving.server.jobs), with its own feature cache. Requests carry the
SHA-256 of the uploaded file as Serve's multiplexed model id, so Serve routes a volume's
requests to the replica that segmented it before (the id it registered through
`volume_slot`), where its image features are cached; a request that waits there longer than
Serve's matching timeout (1 s) goes to another replica and is still answered right, only
without the cached features.

Ray and Serve are imported here and in the backend only: a plain `tevia serve` needs neither.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

from ray import serve

from tevia.serving.replica_backend import ReplicaAnswer, ReplicaBackend, ReplicaRequest
from tevia.serving.server.app import build_app
from tevia.serving.server.backend import http_error
from tevia.serving.server.jobs import InferenceQueue, QueueFull
from tevia.serving.server.settings import ServerSettings
from tevia.serving.server.tempfiles import RequestFolder, open_temp_root, remove_path
from tevia.serving.server.volume_io import UploadedVolume

__all__ = ["ReplicaOptions", "ModelReplica", "Ingress", "APP_NAME",
           "MAX_VOLUMES_PER_REPLICA", "build_application", "run_replicas"]

logger = logging.getLogger(__name__)

APP_NAME = "tevia"
MAX_VOLUMES_PER_REPLICA = 64
"""Volume ids a replica announces for routing (least recently used dropped first); its feature
cache (--cache-mb) decides what it really keeps."""


@dataclass(frozen=True)
class ReplicaOptions:
    """How many model replicas, and what each one gets.

    Attributes:
        model: bundled model name or model folder, loaded once per replica.
        device: "auto", "cpu", "cuda", ...: inside a replica with GPUs, the ones Ray gave it.
        precision: "fp32" or "bf16".
        replicas: number of model replicas (>= 1).
        threads: CPU threads of each replica's torch (also the CPUs Ray reserves for it).
        gpus_per_replica: GPUs Ray reserves for each replica; a fraction (0.5) shares one GPU.
    """

    model: str = "default"
    device: str = "auto"
    precision: str = "fp32"
    replicas: int = 1
    threads: int = 1
    gpus_per_replica: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.replicas, bool) or not isinstance(self.replicas, int) or self.replicas < 1:
            raise ValueError(f"--replicas must be an integer >= 1, got {self.replicas!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"--threads must be an integer >= 1, got {self.threads!r}")
        if not 0 <= self.gpus_per_replica <= 8:
            raise ValueError(f"--gpus-per-replica must be between 0 and 8, got {self.gpus_per_replica!r}")


@serve.deployment(max_ongoing_requests=1)
class ModelReplica:
    """One loaded model segmenting one request at a time.

    Args:
        options: the model and the threads of this replica.
        settings: the server's settings (feature cache bound, temporary folder).
    """

    def __init__(self, options: ReplicaOptions, settings: ServerSettings) -> None:
        import torch

        from tevia.inference.segmenter import Segmenter
        from tevia.serving.server.engine import SegmentationService

        torch.set_num_threads(options.threads)
        segmenter = Segmenter.load(options.model, device=options.device, precision=options.precision)
        self.service = SegmentationService(segmenter, settings.feature_cache_bytes)
        self.queue = InferenceQueue(1)
        self.temp_root, self._owns_temp_root = open_temp_root(settings.temp_dir)
        logger.info("replica %d loaded model %s on %s", os.getpid(), segmenter.spec.name, segmenter.device)

    @serve.multiplexed(max_num_models_per_replica=MAX_VOLUMES_PER_REPLICA)
    async def volume_slot(self, volume_id: str) -> str:
        """Announce that this replica holds (or will hold) the features of `volume_id`."""
        return volume_id

    async def info(self) -> dict[str, Any]:
        """The served model, as the single-process server describes it."""
        return self.service.info()

    async def pid(self) -> int:
        """This replica's process id (tests and operators: which process serves a volume)."""
        return os.getpid()

    async def segment(self, request: ReplicaRequest) -> ReplicaAnswer:
        """Segment one request; errors come back as the HTTP answer the server gives them."""
        volume_id = serve.get_multiplexed_model_id()
        if volume_id:
            await self.volume_slot(volume_id)
        folder = RequestFolder(self.temp_root)
        try:
            path = folder.file("volume" + request.suffix)
            path.write_bytes(request.data)
            job = self.queue.submit(functools.partial(
                self.service.segment, UploadedVolume(path, request.size), request.prompts, request.options, folder,
                clicks=request.clicks))
        except (QueueFull, OSError, RuntimeError) as error:
            folder.remove()
            return _error_answer(error, self.queue.retry_after())
        job.future.add_done_callback(lambda _: folder.remove())
        try:
            summary, labelmap = await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:  # the client went away or timed out: stop the work
            self.queue.cancel(job)
            raise
        except Exception as error:  # answered as the single-process server answers it
            return _error_answer(error, self.queue.retry_after())
        return ReplicaAnswer(200, summary, labelmap)

    def __del__(self) -> None:
        queue = getattr(self, "queue", None)
        if queue is not None:
            queue.stop(timeout=2)
        if getattr(self, "_owns_temp_root", False):
            remove_path(self.temp_root)


def _error_answer(error: BaseException, retry_after: int) -> ReplicaAnswer:
    answer = http_error(error, retry_after)
    if answer is None:
        return ReplicaAnswer(499, detail="cancelled")
    return ReplicaAnswer(answer.status_code, detail=str(answer.detail), headers=dict(answer.headers or {}))


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Ingress:
    """The HTTP side: the server's FastAPI app over the model replicas."""

    def __init__(self, replicas: Any, settings: ServerSettings, count: int, affinity: bool = True) -> None:
        self.replicas = replicas
        self.settings = settings
        self.count = count
        self.affinity = affinity

    def __serve_build_asgi_app__(self) -> Any:
        return build_app(ReplicaBackend(self.replicas, self.settings, self.count, self.affinity), self.settings)


def build_application(options: ReplicaOptions, settings: ServerSettings, affinity: bool = True) -> Any:
    """The Serve application: the ingress bound to `options.replicas` model replicas.

    Args:
        options: model and replica resources.
        settings: the server's token and limits; `queue_limit` requests may wait for a free
            replica (503 with Retry-After beyond them).
        affinity: route a volume's requests to the replica holding its features (the
            default); False routes them as any request (benchmarks compare the two).
    """
    actor_options: dict[str, Any] = {"num_cpus": options.threads,
                                     "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(options.threads),
                                                                  "GOMP_SPINCOUNT": "2000"}}}
    if options.gpus_per_replica:
        actor_options["num_gpus"] = options.gpus_per_replica
    replicas = ModelReplica.options(num_replicas=options.replicas, max_queued_requests=settings.queue_limit,
                                    ray_actor_options=actor_options).bind(options, settings)
    ingress = Ingress.options(max_ongoing_requests=settings.max_connections)
    return ingress.bind(replicas, settings, options.replicas, affinity)


def run_replicas(options: ReplicaOptions, settings: ServerSettings, host: str, port: int,
                 ssl_certfile: str | None = None, ssl_keyfile: str | None = None, address: str | None = None,
                 stop: threading.Event | None = None) -> None:
    """Start (or join) Ray, deploy the application on host:port and serve until stopped.

    Args:
        address: a Ray cluster to join ("auto", "ray://host:10001"); None starts Ray here
            (or joins the one RAY_ADDRESS names).
        stop: ends the serving when set; else SIGINT or SIGTERM end it.
    """
    import ray

    stop = stop or threading.Event()
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": host, "port": port, "ssl_certfile": ssl_certfile,
                                  "ssl_keyfile": ssl_keyfile, "request_timeout_s": settings.request_timeout + 30})
        serve.run(build_application(options, settings), name=APP_NAME, route_prefix="/", blocking=False)
        logger.info("serving model %s on %d replica(s) at %s://%s:%d (token %s)", options.model, options.replicas,
                    "https" if ssl_certfile else "http", host, port, "required" if settings.token else "NOT required")
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: stop.set())
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
