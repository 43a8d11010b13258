"""One case of a cohort: segmented and written by the same code whatever engine runs it."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tqdm import tqdm

from tevia.inference.segment_options import SegmentOptions
from tevia.inference.session import InferenceSession

__all__ = ["CaseOutcome", "segment_case"]

log = logging.getLogger("tevia.commands.predict")


@dataclass(frozen=True)
class CaseOutcome:
    """How one case ended: status "done", "failed" or "skipped", with a message, its seconds and
    when it ended (ISO time, where it ran)."""

    input: str
    output: str
    status: str
    message: str = ""
    seconds: float = 0.0
    finished: str = field(default_factory=lambda: datetime.now().isoformat(timespec="microseconds"))


def segment_case(session: InferenceSession, input_path: str, prompts: list[str], output: str,
                 options: SegmentOptions) -> CaseOutcome:
    """Segment one case and write its output; every error becomes a "failed" outcome."""
    began = time.perf_counter()
    try:
        done = session.segment_file(input_path, prompts, output, options, sidecar={"input": input_path})
    except (OSError, ValueError) as error:
        log.debug("%s failed", input_path, exc_info=error)
        return CaseOutcome(input_path, output, "failed", str(error), time.perf_counter() - began)
    for message in done.warnings:
        tqdm.write(f"WARNING: {Path(input_path).name}: {message}", file=sys.stderr)
    log.info("%s -> %s %s (%.1f s)", Path(input_path).name, output, done.result.voxels, done.result.timings["total"])
    return CaseOutcome(input_path, output, "done", "", time.perf_counter() - began)
