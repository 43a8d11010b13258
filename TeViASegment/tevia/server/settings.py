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
        request_timeout: seconds a request may take from its first byte to its answer,
            upload and inference together (408 while uploading, 504 while segmenting).
        max_prompts: most `text` fields in one request (with max_prompt_chars, this keeps
            the X-TeViA-Labels header well under HTTP clients' 64 KB header limits).
        max_prompt_chars: longest accepted prompt.
        max_voxels: most voxels in an uploaded volume (read from its header before its data).
        feature_cache_bytes: memory for cached image features (re-prompting the same volume
            skips the vision encoder); 2 GiB as in the worker.
        temp_dir: the server's own temporary folder; uploads and answers are written only
            inside it, under names the server chooses. None: a fresh folder per app.
    """

    token: str | None = None
    max_upload_bytes: int = 512 * 1024 * 1024
    queue_limit: int = 8
    request_timeout: float = 600.0
    max_prompts: int = 16
    max_prompt_chars: int = 256
    max_voxels: int = 512 * 512 * 1024
    feature_cache_bytes: int = 2 * 1024**3
    temp_dir: Path | None = None

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "queue_limit", "max_prompts", "max_prompt_chars", "max_voxels",
                     "feature_cache_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.request_timeout > 0:
            raise ValueError(f"request_timeout must be > 0 seconds, got {self.request_timeout!r}")
        if self.token is not None and not self.token:
            raise ValueError("token must be a non-empty string or None")
