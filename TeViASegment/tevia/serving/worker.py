"""The warm background worker: ``python -m tevia.serving.worker``, JSON lines on stdin/stdout.

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
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from tevia.openmp import limit_spinning

limit_spinning()  # before torch loads (tevia/openmp.py)

import torch  # noqa: E402

from tevia.inference.segment_options import SegmentOptions  # noqa: E402
from tevia.inference.session import InferenceSession, ModelLoadError, input_paths  # noqa: E402
from tevia.volume.errors import InputError  # noqa: E402
from tevia.volume.io import file_extension  # noqa: E402
from tevia.inference.pipeline import Cancelled  # noqa: E402
from tevia.volume.writers import check_output_path  # noqa: E402
from tevia.serving.worker_requests import (ERROR_CODES, MAX_REQUEST_CHARS, PROTOCOL_VERSION,  # noqa: E402
                                    RequestError, input_key, parse_request, request_clicks, request_lines, shown)

__all__ = ["PROTOCOL_VERSION", "ERROR_CODES", "MAX_REQUEST_CHARS", "RequestError", "Worker", "main"]

log = logging.getLogger("tevia.serving.worker")


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
        self.session = InferenceSession(cache_bytes)

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
        session = self.session
        self.emit(request["id"], "result", model=session.model,
                  device=str(session.segmenter.device) if session.segmenter is not None else None,
                  cache={"entries": len(session.cache), "bytes": session.cache.nbytes, "hits": session.cache.hits})

    def _handle_load(self, request: dict[str, Any]) -> None:
        model, device = request.get("model", "default"), request.get("device", "auto")
        if not isinstance(model, str) or not model or not isinstance(device, str):
            raise RequestError("bad_request", f"load needs 'model' (name or folder) and 'device' strings, "
                                              f"got model={shown(model)}, device={shown(device)}")
        self.emit(request["id"], "result", model=model,
                  **self._session_call(self.session.load, model, device, request.get("precision", "fp32")))

    @staticmethod
    def _session_call(method: Callable[..., Any], *args: Any) -> Any:
        """Call a session method that may load a model; its errors become protocol errors."""
        try:
            return method(*args)
        except ValueError as error:  # a device or precision that cannot be used
            raise RequestError("bad_request", str(error)) from error
        except ModelLoadError as error:
            raise RequestError("not_found" if error.missing else "model_error", str(error)) from error

    def _segment_request(self, request: dict[str, Any]) -> tuple[Any, list[str], Path, SegmentOptions]:
        source, prompts, output = request.get("input"), request.get("prompts"), request.get("output")
        raw = isinstance(source, dict) and set(source) == {"npy", "geometry"}
        inputs = list(input_paths(source)) if isinstance(source, str) or raw else []
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
        self._session_call(self.session.ensure_loaded, request.get("model"), request.get("device") or "auto")

        def progress(stage: str, done: int, total: int) -> None:
            self.emit(request_id, "progress", stage=stage, done=done, total=total)

        def warn(message: str) -> None:
            self.emit(request_id, "warning", message=message)

        crop = request.get("crop", False)
        if not isinstance(crop, bool) or (crop and file_extension(output) != ".npy"):
            raise RequestError("bad_request", f"'crop' must be true or false, and true only with a .npy output; "
                                              f"got crop={shown(crop)} with output {output.name!r}")
        done = self.session.segment_file(source, prompts, output, options, key, progress,
                                         lambda: request_id in self._cancelled, warn, clicks, crop=crop)
        result = done.result
        self.emit(request_id, "result", output=str(done.output),
                  **({} if done.crop_origin is None else {"crop_origin": done.crop_origin}),
                  labels={str(k): v for k, v in result.labels.items()}, voxels=result.voxels, prompts=result.prompts,
                  warnings=done.warnings, domain=result.domain, cache_hit=bool(result.timings.get("cache_hit")),
                  input_reused=done.input_reused, timings={k: round(v, 4) for k, v in result.timings.items()},
                  **({} if result.refined_slices is None else {"refined_slices": result.refined_slices,
                                                               "refined_axis": result.refined_axis}))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tevia.serving.worker``."""
    parser = argparse.ArgumentParser(prog="python -m tevia.serving.worker", description=__doc__.splitlines()[0])
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
