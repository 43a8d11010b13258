"""Limits and security settings of the HTTP inference server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServerSettings"]


@dataclass(frozen=True)
class ServerSettings:
    """What the server accepts and how long it waits.

    Attributes:
        token: the bearer token every /v1 request except /v1/health must carry; None only
            when the server runs with --insecure-no-token on 127.0.0.1.
        max_upload_bytes: largest request body accepted (413 beyond it).
        queue_limit: requests that may wait behind the running one (503 beyond it).
        max_uploads: requests whose body may be arriving at once; one more gets 503 before
            any byte of its body is read.
        request_timeout: seconds a request may take from its first byte to its answer,
            upload and inference together (408 while uploading, 504 while segmenting).
        max_prompts: most `text` fields in one request.
        max_prompt_chars: longest accepted prompt.
        max_voxels: most voxels in an uploaded volume, every dimension counted (read from its
            header before its data).
        memory_budget_bytes: memory one request's volume may take while it is decoded and
            segmented: components x voxels x bytes per component for every copy the reader
            makes, plus the labelmap and work arrays (413 beyond it, before any voxel is
            decoded).
        feature_cache_bytes: memory for cached image features (re-prompting the same volume
            skips the vision encoder); 2 GiB as in the worker.
        temp_dir: the server's own temporary folder; uploads and answers are written only
            inside it, under names the server chooses. It must belong to the server's user
            and be writable by nobody else. None: a fresh folder per app.
        max_connections: open connections the HTTP server keeps; requests beyond get 503.
        head_timeout: seconds a connection may take to send a request's line and headers
            (from its opening or the previous answer); then it is closed.
    """

    token: str | None = None
    max_upload_bytes: int = 512 * 1024 * 1024
    queue_limit: int = 8
    max_uploads: int = 4
    request_timeout: float = 600.0
    max_prompts: int = 16
    max_prompt_chars: int = 256
    max_voxels: int = 512 * 512 * 1024
    memory_budget_bytes: int = 4 * 1024**3
    feature_cache_bytes: int = 2 * 1024**3
    temp_dir: Path | None = None
    max_connections: int = 64
    head_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "queue_limit", "max_uploads", "max_prompts", "max_prompt_chars",
                     "max_voxels", "memory_budget_bytes", "feature_cache_bytes", "max_connections"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("request_timeout", "head_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if self.token is not None and not self.token:
            raise ValueError("token must be a non-empty string or None")
