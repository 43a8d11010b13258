"""Client of the TeViA inference server (`tevia serve`), for Slicer's remote mode.

Standard library + numpy + SimpleITK only (no requests/httpx inside Slicer). This module builds
the requests and checks the answers; http_transport.py sends them (connection, token, streaming,
cancel, HTTP errors). Volumes go up as a compressed NRRD (ITK's LPS frame) in a multipart POST
/v1/segment, with a segment's corrective clicks in the `clicks` field when there are any; the
answer (API version 2) is one JSON body: the label-to-prompt map, warnings, the labelmap as
base64 NIfTI and, for clicks, the refined slices (docs/SERVER.md).
Arrays are in numpy K, J, I order, as slicer.util.arrayFromVolume gives them, with the
volume's 4x4 IJK-to-RAS matrix.
"""

from __future__ import annotations

import base64
import binascii
import json
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from TeViASegmentLib.http_transport import HttpTransport, RemoteCancelled, RemoteError, body_length

__all__ = ["RemoteError", "RemoteCancelled", "RemoteClient", "RemoteAnswer", "API_VERSION"]

API_VERSION = 2
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_GEOMETRY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class RemoteAnswer:
    """A /v1/segment answer: the labelmap (uint8, K, J, I, the volume's geometry), {label:
    prompt}, the warnings, and the answer's other fields (`prompts`, `domain`, `voxels`,
    `timings`; with clicks `refined_slices` and `refined_axis`), as a local worker's `segment`
    result carries them (PROTOCOL.md)."""

    labelmap: np.ndarray
    labels: dict[int, str]
    warnings: list[str]
    fields: dict


def _checked_clicks(clicks: list | None, prompts: list[str]) -> str | None:
    """The `clicks` form field (JSON), None when there are no clicks; ValueError for a value that
    is not one list of click dicts per prompt (the server checks each click in full)."""
    if clicks is None:
        return None
    if (not isinstance(clicks, list) or len(clicks) != len(prompts)
            or not all(isinstance(c, list) and all(isinstance(x, dict) for x in c) for c in clicks)):
        raise ValueError(f"clicks must be one list of clicks ({{\"ras\": [R, A, S], \"positive\": true}}) per "
                         f"prompt ({len(prompts)}), got {str(clicks)[:80]}")
    return json.dumps(clicks) if any(clicks) else None


def _image_from_kji(volume_kji: np.ndarray, ijk_to_ras: np.ndarray) -> sitk.Image:
    """An ITK image (LPS physical frame) from a KJI array and its IJK-to-RAS matrix."""
    array = np.asarray(volume_kji)
    if array.ndim != 3:
        raise ValueError(f"volume_kji must be a 3D array in K, J, I order, got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    matrix = np.asarray(ijk_to_ras, dtype=float)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise ValueError(f"ijk_to_ras must be a finite 4x4 matrix, got shape {matrix.shape}")
    ijk_to_lps = _RAS_TO_LPS @ matrix
    axes = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0) or abs(np.linalg.det(axes)) < 1e-12:
        raise ValueError(f"ijk_to_ras has a zero or degenerate axis (spacing {spacing.tolist()})")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((axes / spacing).flatten().tolist())
    image.SetOrigin(ijk_to_lps[:3, 3].tolist())
    return image


def _same_geometry(answer: sitk.Image, sent: sitk.Image) -> str | None:
    """None when the two images share size, spacing, origin and direction; else the difference."""
    if answer.GetSize() != sent.GetSize():
        return f"size {answer.GetSize()} instead of {sent.GetSize()}"
    for name in ("Spacing", "Origin", "Direction"):
        got, want = (np.array(getattr(img, f"Get{name}")()) for img in (answer, sent))
        scale = max(1.0, float(np.abs(want).max()))
        if not np.allclose(got, want, atol=_GEOMETRY_TOLERANCE * scale, rtol=0):
            return f"{name.lower()} {got.tolist()} instead of {want.tolist()}"
    return None


def _multipart(volume: Path, prompts: list[str], options: dict[str, Any], clicks: str | None
               ) -> tuple[str, list[bytes | Path]]:
    """The Content-Type and body parts of a /v1/segment form: one `text` field per prompt,
    `options` (JSON), `clicks` when given, and the `volume` file (sent whole from disk)."""
    boundary = f"tevia-{uuid.uuid4().hex}"
    parts: list[bytes | Path] = []

    def field(name: str, value: str) -> bytes:
        return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n"
                f"Content-Type: text/plain; charset=utf-8\r\n\r\n").encode() + value.encode("utf-8") + b"\r\n"

    for prompt in prompts:
        parts.append(field("text", prompt))
    parts.append(field("options", json.dumps(options)))
    if clicks is not None:
        parts.append(field("clicks", clicks))
    parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"volume\"; filename=\"volume.nrrd\"\r\n"
                 f"Content-Type: application/octet-stream\r\n\r\n".encode())
    parts.append(volume)
    parts.append(f"\r\n--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", parts


class RemoteClient:
    """Talks to one TeViA server.

    Args:
        url: the server's base URL, e.g. "https://gpu-server:8765" (http or https; a path
            prefix is kept, for servers behind a reverse proxy).
        token: the server's bearer token, or None for a server run with --insecure-no-token.
        timeout: seconds a whole request may take (upload, queue, inference, download).
        ca_file: a PEM file of certificate authorities to trust for https (e.g. the server's
            self-signed certificate); None: the system's.

    Raises:
        ValueError: a URL that is not http(s) with a host, or a timeout that is not > 0.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 600, ca_file: str | None = None) -> None:
        self._http = HttpTransport(url, token, timeout, ca_file)
        self.url, self.token, self.timeout = self._http.url, self._http.token, self._http.timeout

    # -- public API -------------------------------------------------------------------------
    def health(self) -> dict:
        """GET /v1/health: {"status": "ok", "busy": bool, "waiting": int}. Needs no token."""
        return self._http.get_json("/v1/health")

    def info(self) -> dict:
        """GET /v1/info: name, version, api, model, device, side_convention, example_prompts,
        limits. Checks the token and the API version (RemoteError on a mismatch)."""
        info = self._http.get_json("/v1/info")
        if info.get("api") != API_VERSION:
            raise RemoteError(f"the server at {self.url} speaks API version {info.get('api')!r}; this module "
                              f"speaks {API_VERSION}: update the TeViA extension or the server so they match")
        return info

    def segment(self, volume_kji: np.ndarray, ijk_to_ras: np.ndarray, prompts: list[str], options: dict,
                cancelled: Callable[[], bool] | None = None) -> tuple[np.ndarray, dict[int, str], list[str]]:
        """Segment a volume on the server: `segment_answer` without clicks, as (labelmap uint8 of
        shape (K, J, I) in the same geometry, {label: prompt}, warnings from the server)."""
        answer = self.segment_answer(volume_kji, ijk_to_ras, prompts, options, cancelled=cancelled)
        return answer.labelmap, answer.labels, answer.warnings

    def segment_answer(self, volume_kji: np.ndarray, ijk_to_ras: np.ndarray, prompts: list[str], options: dict,
                       clicks: list[list[dict]] | None = None,
                       cancelled: Callable[[], bool] | None = None) -> RemoteAnswer:
        """Segment a volume on the server, with corrective clicks if given.

        Args:
            volume_kji: voxels, shape (K, J, I) (slicer.util.arrayFromVolume order).
            ijk_to_ras: 4x4 IJK-to-RAS matrix of the volume (Slicer's frame).
            prompts: one or more text prompts; label n answers prompt n.
            options: segmentation options (tevia.inference.segment_options.SegmentOptions fields).
            clicks: one list of clicks per prompt, as a worker request carries them
                (`{"ras": [R, A, S], "positive": bool}`, RAS in the volume's frame;
                PROTOCOL.md, "Corrective clicks"); the answer then holds labels only on the
                clicked slices and says which (`fields["refined_slices"]`, `["refined_axis"]`).
                Lists without a click segment as without clicks.
            cancelled: polled during upload, wait and download; True closes the connection
                (the server then cancels the work) and raises RemoteCancelled.

        Raises:
            ValueError: bad arguments (names the argument and the value).
            RemoteError: the server or the network failed, or it serves a model without click
                inputs and clicks were given; RemoteCancelled when cancelled.
        """
        if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"prompts must be a non-empty list of non-empty strings, got {prompts!r}")
        if not isinstance(options, dict):
            raise ValueError(f"options must be a dict, got {type(options).__name__}")
        clicks_field = _checked_clicks(clicks, list(prompts))
        image = _image_from_kji(volume_kji, ijk_to_ras)
        info = self.info()
        if clicks_field is not None and not info.get("click_inputs"):
            raise RemoteError(f"the model served at {self.url} ({info.get('model')}) takes no clicks: serve a "
                              f"model trained with clicks there, or correct the segment in Segment Editor")
        limits = info.get("limits", {})
        with tempfile.TemporaryDirectory(prefix="tevia-remote-") as folder:
            upload = Path(folder) / "volume.nrrd"
            sitk.WriteImage(image, str(upload), useCompression=True, compressionLevel=1)
            content_type, parts = _multipart(upload, list(prompts), options, clicks_field)
            length = body_length(parts)
            limit = limits.get("max_upload_bytes")
            if limit is not None and length > limit:
                raise RemoteError(f"the volume is too large for the server at {self.url} ({length / 2**20:.1f} MB "
                                  f"compressed, limit {limit / 2**20:.0f} MB): crop or resample it, or ask the "
                                  f"server's administrator to raise --max-upload-mb")
            answer_path = Path(folder) / "answer.json"
            self._http.request("POST", "/v1/segment", parts, content_type, answer_path, cancelled)
            labelmap_path = Path(folder) / "labelmap.nii.gz"
            labels, warnings, fields = self._read_answer(answer_path, labelmap_path)
            try:
                answer = sitk.ReadImage(str(labelmap_path))
            except RuntimeError as error:
                raise RemoteError(f"the server's answer is not a readable NIfTI labelmap ({error})") from None
        difference = _same_geometry(answer, image)
        if difference is not None:
            raise RemoteError(f"the server answered a labelmap with another geometry ({difference}); "
                              f"the server and this module may not match: update them")
        labelmap = sitk.GetArrayFromImage(answer)
        if labelmap.min(initial=0) < 0 or labelmap.max(initial=0) > 255:
            raise RemoteError("the server's labelmap holds values outside 0..255")
        return RemoteAnswer(labelmap.astype(np.uint8, copy=False), labels, warnings, fields)

    def _read_answer(self, answer: Path, labelmap: Path) -> tuple[dict[int, str], list[str], dict]:
        """Labels, warnings and other fields of a /v1/segment answer; its labelmap is written to `labelmap`."""
        try:
            payload = json.loads(answer.read_bytes())
            version = payload.get("api")
        except (ValueError, AttributeError):
            payload, version = None, None
        if version != API_VERSION:
            raise RemoteError(f"the server at {self.url} answered in API version {version!r}; this module speaks "
                              f"{API_VERSION}: update the TeViA extension or the server so they match")
        try:
            labels = {int(label): str(prompt) for label, prompt in payload["labels"].items()}
            warnings = [str(w) for w in payload.get("warnings", [])]
            encoded = payload["labelmap"]
            if encoded.get("format") != "nii.gz" or encoded.get("encoding") != "base64":
                raise ValueError(encoded.get("format"), encoded.get("encoding"))
            labelmap.write_bytes(base64.b64decode(encoded["data"], validate=True))
        except (ValueError, TypeError, KeyError, AttributeError, binascii.Error):
            raise RemoteError(f"the server's answer lacks valid labels or a base64 .nii.gz labelmap: is it a TeViA "
                              f"server of API version {API_VERSION}?") from None
        fields = {key: value for key, value in payload.items() if key not in ("api", "labels", "warnings", "labelmap")}
        return labels, warnings, fields

