"""The warm background worker: ``python -m tevia.worker``, JSON lines on stdin/stdout.

One request per line in, one event per line out (the protocol is in PROTOCOL.md next to this
file). stdout carries only protocol lines: everything else (logging, stray prints, C-level
output) goes to stderr. A reader thread takes requests while a segment runs, so a ``cancel``
stops the work between model steps (well within a second). Any error becomes an ``error`` event
with a code, and the worker keeps serving.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from tevia.device import check_precision, describe_device, is_out_of_memory
from tevia.volume.pipeline import Cancelled, FeatureCache, SegmentOptions, image_fingerprint, segment_volume
from tevia.volume.clicks import RequestClick
from tevia.volume.errors import InputError
from tevia.volume.io import input_signature, read_input
from tevia.volume.writers import check_output_path, write_labelmap
from tevia.worker_requests import (ERROR_CODES, MAX_REQUEST_CHARS, PROTOCOL_VERSION, RequestError, input_key,
                                    parse_request, request_clicks, request_lines, shown)

__all__ = ["PROTOCOL_VERSION", "ERROR_CODES", "MAX_REQUEST_CHARS", "RequestError", "Worker", "main"]

log = logging.getLogger("tevia.worker")

@dataclass
class _KeptInput:
    """The last input read: what identifies it (its files' signature, or the client's input key
    and the input), the image, its warnings, and its voxel fingerprint."""

    identity: tuple
    image: Any
    warnings: list[str]
    fingerprint: str


class Worker:
    """Serves requests from a text stream and writes events to another (see PROTOCOL.md).

    Args:
        events: Where event lines go (the real stdout).
        cache_bytes: Bound of the image-feature cache.
    """

    def __init__(self, events: IO[str], cache_bytes: int = 2 * 1024**3) -> None:
        self._events = events
        self._write_lock = threading.Lock()
        self._requests: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._cancelled: set[str] = set()
        self._pending: set[str] = set()
        self._state_lock = threading.Lock()
        self.cache = FeatureCache(cache_bytes)
        self._kept: _KeptInput | None = None
        self.segmenter: Any = None
        self.model: str | None = None

    def emit(self, request_id: str | None, event: str, **fields: Any) -> None:
        """Write one event line (thread-safe, flushed)."""
        line = json.dumps({"id": request_id, "event": event, **fields}, ensure_ascii=True, default=str)
        with self._write_lock:
            self._events.write(line + "\n")
            self._events.flush()

    def read_requests(self, stream: IO[str]) -> None:
        """Reader thread: parse lines, handle cancels at once, queue the rest; EOF means shutdown.

        A bad line is answered with a ``bad_request`` error and skipped: no line stops the
        reader, and whatever ends it (end of input, a read error) ends the worker.
        """
        try:
            for line in request_lines(stream):
                try:
                    self._take(line)
                except RequestError as error:
                    self.emit(error.request_id, "error", code=error.code, message=str(error))
                except Exception as error:  # a bug: the worker must not go deaf
                    log.error("request line failed:\n%s", traceback.format_exc())
                    self.emit(None, "error", code="internal", message=f"{type(error).__name__}: {error}")
        finally:
            with self._state_lock:
                self._cancelled.update(self._pending)
            self._requests.put(None)

    def _take(self, line: str | None) -> None:
        """Handle one request line: a cancel at once, other requests into the queue."""
        if line is None:
            raise RequestError("bad_request", f"request line longer than {MAX_REQUEST_CHARS} characters: "
                                              "skipped; send paths (e.g. raw voxels as .npy), not data")
        if not line.strip():
            return
        request = parse_request(line)
        if request["type"] == "cancel":
            self._cancel(request)
            return
        with self._state_lock:
            self._pending.add(request["id"])
            if request["type"] == "shutdown":
                self._cancelled.update(self._pending - {request["id"]})
        self._requests.put(request)

    def _cancel(self, request: dict[str, Any]) -> None:
        target = request.get("target")
        with self._state_lock:
            known = target in self._pending
            if known:
                self._cancelled.add(target)
        if not known:
            self.emit(request["id"], "error", code="not_found",
                      message=f"cancel: no running or queued request with id {target!r}")

    def serve(self, stream: IO[str]) -> int:
        """Serve until a shutdown request or the end of input; returns the exit status."""
        threading.Thread(target=self.read_requests, args=(stream,), daemon=True, name="requests").start()
        self.emit(None, "ready", protocol=PROTOCOL_VERSION, pid=os.getpid(), torch=torch.__version__,
                  cuda=torch.cuda.is_available())
        while True:
            request = self._requests.get()
            if request is None:
                return 0
            request_id = request["id"]
            try:
                if request_id in self._cancelled:
                    raise Cancelled("cancelled before it started")
                if request["type"] == "shutdown":
                    self.emit(request_id, "result", shutdown=True)
                    return 0
                getattr(self, f"_handle_{request['type']}")(request)
            except Cancelled:
                self.emit(request_id, "cancelled")
            except RequestError as error:
                self.emit(request_id, "error", code=error.code, message=str(error))
            except FileNotFoundError as error:
                self.emit(request_id, "error", code="not_found", message=str(error))
            except InputError as error:
                self.emit(request_id, "error", code=error.code, message=str(error))
            except MemoryError as error:
                self.emit(request_id, "error", code="out_of_memory",
                          message=f"out of memory: {error}; try a smaller volume or batch_size")
            except Exception as error:  # the worker must survive any failure of one request
                log.error("request %s failed:\n%s", request_id, traceback.format_exc())
                self.emit(request_id, "error", code="internal", message=f"{type(error).__name__}: {error}")
            finally:
                with self._state_lock:
                    self._pending.discard(request_id)
                    self._cancelled.discard(request_id)

    def _handle_ping(self, request: dict[str, Any]) -> None:
        self.emit(request["id"], "result", model=self.model,
                  device=str(self.segmenter.device) if self.segmenter is not None else None,
                  cache={"entries": len(self.cache), "bytes": self.cache.nbytes, "hits": self.cache.hits})

    def _handle_load(self, request: dict[str, Any]) -> None:
        model, device = request.get("model", "default"), request.get("device", "auto")
        if not isinstance(model, str) or not model or not isinstance(device, str):
            raise RequestError("bad_request", f"load needs 'model' (name or folder) and 'device' strings, "
                                              f"got model={shown(model)}, device={shown(device)}")
        self.emit(request["id"], "result", **self._load(model, device, request.get("precision", "fp32")))

    def _load(self, model: str, device: str, precision: str = "fp32") -> dict[str, Any]:
        from tevia.inference import Segmenter, select_device

        try:
            resolved = select_device(device)
            check_precision(precision, resolved)
        except ValueError as error:
            raise RequestError("bad_request", str(error)) from error
        began = time.perf_counter()
        try:
            segmenter = Segmenter.load(model, device=str(resolved), precision=precision)
        except (FileNotFoundError, ValueError) as error:
            raise RequestError("not_found", f"cannot load model {model!r}: {error}") from error
        except Exception as error:
            log.error("loading %s failed:\n%s", model, traceback.format_exc())
            raise RequestError("model_error", f"cannot load model {model!r}: {type(error).__name__}: {error}") from error
        self.segmenter, self.model = segmenter, model
        self.cache.clear()
        spec = segmenter.spec
        return {"model": model, "name": getattr(spec, "name", model), "version": getattr(spec, "version", ""),
                "device": str(segmenter.device), "device_name": describe_device(segmenter.device),
                "precision": segmenter.precision,
                "image_size": list(spec.image_size), "side_convention": spec.side_convention,
                "example_prompts": list(getattr(spec, "example_prompts", [])),
                "click_inputs": bool(getattr(spec, "click_inputs", False)),
                "load_seconds": round(time.perf_counter() - began, 3)}

    def _segment_request(self, request: dict[str, Any]) -> tuple[Any, list[str], Path, SegmentOptions]:
        source, prompts, output = request.get("input"), request.get("prompts"), request.get("output")
        raw = isinstance(source, dict) and set(source) == {"npy", "geometry"}
        inputs = [source] if isinstance(source, str) else list(source.values()) if raw else []
        if not inputs or not all(isinstance(p, str) and p for p in inputs) or not isinstance(output, str) or not output:
            raise RequestError("bad_request", "segment needs 'input' (a path or {\"npy\": path, \"geometry\": "
                                              "path}), 'prompts' (list of strings) and 'output' (a path), got input "
                                              f"{shown(source)} and output {shown(output)}")
        relative = [p for p in [output, *inputs] if not os.path.isabs(p)]
        if relative:
            raise RequestError("bad_request", f"paths must be absolute (the worker's folder is not the "
                                              f"client's), got {shown(relative)}")
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise RequestError("bad_request", f"'prompts' must be a list of strings, got {shown(prompts)}")
        for key in ("model", "device"):
            if request.get(key) is not None and not isinstance(request[key], str):
                raise RequestError("bad_request", f"'{key}' must be a string, got {shown(request[key])}")
        try:
            options = SegmentOptions.from_dict(request.get("options"))
        except (TypeError, ValueError) as error:
            raise RequestError("bad_request", f"bad options: {error}") from error
        return source, prompts, check_output_path(output, inputs=tuple(inputs)), options

    def _handle_segment(self, request: dict[str, Any]) -> None:
        request_id = request["id"]
        source, prompts, output, options = self._segment_request(request)
        key = input_key(request)
        clicks = request_clicks(request, prompts)
        model = request.get("model")
        if model is not None and model != self.model or self.segmenter is None:
            self._load(model or "default", request.get("device") or "auto")
        began = time.perf_counter()
        self.emit(request_id, "progress", stage="read", done=0, total=1)
        image, warnings, reused = self.read(source, key)
        check_output_path(output, image)
        read_seconds = time.perf_counter() - began
        for message in warnings:
            self.emit(request_id, "warning", message=message)

        def progress(stage: str, done: int, total: int) -> None:
            self.emit(request_id, "progress", stage=stage, done=done, total=total)

        def cancelled() -> bool:
            return request_id in self._cancelled

        result = self._run_with_fallback(request_id, image, prompts, options, progress, cancelled, clicks)
        if cancelled():
            raise Cancelled("cancelled before writing")
        for message in result.warnings:
            self.emit(request_id, "warning", message=message)
        result.timings["read"] = read_seconds
        result.timings["total"] += read_seconds
        all_warnings = warnings + result.warnings
        self.emit(request_id, "progress", stage="write", done=0, total=1)
        began = time.perf_counter()
        write_labelmap(result.labelmap, output, result.labels, {
            "model": self.model, "convention": options.convention, "prompts": result.prompts,
            "voxels": result.voxels, "options": options.to_dict(), "warnings": all_warnings,
            "domain": result.domain})
        result.timings["write"] = time.perf_counter() - began
        result.timings["total"] += result.timings["write"]
        self.emit(request_id, "result", output=str(output), labels={str(k): v for k, v in result.labels.items()},
                  voxels=result.voxels, prompts=result.prompts, warnings=all_warnings, domain=result.domain,
                  cache_hit=bool(result.timings.get("cache_hit")), input_reused=reused,
                  timings={k: round(v, 4) for k, v in result.timings.items()},
                  **({} if result.refined_slices is None else {"refined_slices": result.refined_slices,
                                                               "refined_axis": result.refined_axis}))

    def read(self, source: Any, key: str | None = None) -> tuple[Any, list[str], bool]:
        """``read_input``, reusing the previous request's image when it read the same input.

        The same input is, without ``key``, the same unchanged files (see
        ``tevia.volume.io.input_signature``); with ``key``, the same ``source`` under the same key:
        the client's promise that the content is what it was (PROTOCOL.md, ``input_key``), so
        the files are not even looked at. One image is kept, with its voxel fingerprint for the
        feature cache; it is dropped before a different input is read, so two volumes never sit
        in memory.

        Returns:
            (image, warnings, reused)
        """
        identity = ("input_key", key, json.dumps(source, sort_keys=True)) if key is not None \
            else input_signature(source)
        if identity is not None and self._kept is not None and self._kept.identity == identity:
            return self._kept.image, list(self._kept.warnings), True
        self._kept = None
        image, warnings = read_input(source)
        if identity is not None and (key is not None or input_signature(source) == identity):  # not changed while read
            # the worker never changes the kept image: hash its voxels once, not once per prompt
            self._kept = _KeptInput(identity, image, list(warnings), image_fingerprint(image))
        return image, warnings, False

    def _run_with_fallback(self, request_id: str, image: Any, prompts: list[str], options: SegmentOptions,
                           progress: Any, cancelled: Any, clicks: list[list[RequestClick]] | None = None) -> Any:
        """segment_volume; on device out-of-memory (even one slice), reload on the CPU and retry."""
        digest = self._kept.fingerprint if self._kept is not None and self._kept.image is image else None
        try:
            return segment_volume(self.segmenter, image, prompts, options, progress, cancelled, self.cache, digest,
                                  clicks)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            if self.segmenter.device.type == "cpu":
                raise MemoryError(str(error)) from error
            self.emit(request_id, "warning", message=f"out of memory on {self.segmenter.device} even with one "
                                                     "slice per batch: falling back to the CPU (slower)")
        precision = self.segmenter.precision
        self.segmenter = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self._load(self.model or "default", "cpu", precision)
        return segment_volume(self.segmenter, image, prompts, options, progress, cancelled, self.cache, digest,
                              clicks)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tevia.worker``."""
    parser = argparse.ArgumentParser(prog="python -m tevia.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--cache-mb", type=int, default=2048, help="image-feature cache bound (MiB)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    parser.add_argument("--log-level", default="INFO", help="logging level (logs go to stderr)")
    args = parser.parse_args(argv)
    events = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    requests = open(sys.stdin.fileno(), encoding="utf-8", errors="replace", closefd=False)
    status = Worker(events, args.cache_mb * 1024**2).serve(requests)
    events.flush()
    logging.shutdown()
    sys.stderr.flush()
    return status


if __name__ == "__main__":
    os._exit(main())  # every output is written and flushed: skip the slow teardown of torch/transformers
