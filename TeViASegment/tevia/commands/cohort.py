"""Cohort runs of ``tevia predict`` (``--csv`` or ``--input-dir``): a status row per case, reruns, parts.

Every case of a run ends in one row of the status file (``tevia-status.csv`` in ``--out``):
``done``, ``failed`` with the error's message, or ``skipped`` with the reason. One bad case
never stops the others. A rerun reads the status files of ``--out`` and skips the cases done
before whose output is still there, and the cases that failed before unless ``--retry-failed``.

Engines: ``local`` segments the cases one after another in this process (one model load);
``ray`` streams them through Ray Data (tevia.commands.cohort_ray): ``--workers N`` actors,
each loading the model once. Without Ray, ``--num-parts K --part-id I`` keeps every K-th case
from the I-th on (a static split: one Slurm job-array task per part, each with its own status
file ``tevia-status-part{I}-of-{K}.csv``; a rerun reads them all).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from tevia.commands.cohort_case import CaseOutcome, segment_case
from tevia.inference.segment_options import SegmentOptions
from tevia.inference.session import InferenceSession

__all__ = ["STATUS_FIELDS", "StatusFile", "add_cohort_arguments", "check_cohort_arguments", "select_part",
           "status_path", "previous_status", "run_cohort"]

log = logging.getLogger("tevia.commands.predict")

STATUS_FIELDS = ("input", "output", "status", "message", "seconds", "finished")
ENGINES = ("local", "ray")


def add_cohort_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the cohort options of ``tevia predict``."""
    group = parser.add_argument_group("cohorts (--csv, --input-dir; see docs/SCALE.md)")
    group.add_argument("--engine", default="local", choices=ENGINES,
                       help="local: one case after another here; ray: Ray Data actors (the `ray` extra)")
    group.add_argument("--workers", type=int, help="model actors of --engine ray (default 1)")
    group.add_argument("--threads", type=int, help="CPU threads per --engine ray worker (default 1)")
    group.add_argument("--gpus-per-worker", type=float, help="GPUs per --engine ray worker (default 0)")
    group.add_argument("--ray-address", help="join this Ray cluster ('auto') instead of starting Ray here")
    group.add_argument("--num-parts", type=int, default=1, help="split the cohort into K parts (Slurm arrays)")
    group.add_argument("--part-id", type=int, default=0, help="the part this run segments, 0..K-1")
    group.add_argument("--retry-failed", action="store_true", help="segment again the cases that failed before")


def check_cohort_arguments(args: argparse.Namespace) -> None:
    """Refuse cohort options that do not fit the run (before any model loads).

    Raises:
        ValueError: naming the option, the value and what to do.
    """
    cohort = args.input is None
    if not cohort and (args.engine != "local" or args.num_parts != 1 or args.workers is not None):
        raise ValueError("--engine, --workers and --num-parts are for cohorts: give --csv or --input-dir")
    if args.num_parts < 1:
        raise ValueError(f"--num-parts must be >= 1, got {args.num_parts}")
    if not 0 <= args.part_id < args.num_parts:
        raise ValueError(f"--part-id must be 0..{args.num_parts - 1} for --num-parts {args.num_parts}, "
                         f"got {args.part_id}")
    for name in ("workers", "threads", "gpus_per_worker", "ray_address"):
        if getattr(args, name) is not None and args.engine != "ray":
            raise ValueError(f"--{name.replace('_', '-')} goes with --engine ray")
    for name in ("workers", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.gpus_per_worker is not None and not 0 <= args.gpus_per_worker <= 8:
        raise ValueError(f"--gpus-per-worker must be between 0 and 8, got {args.gpus_per_worker}")
    if args.engine == "ray":
        from tevia.model_folders import resolve_model

        try:
            import ray  # noqa: F401  (the check that the extra is installed)
        except ImportError:
            raise ValueError('--engine ray needs Ray Data: pip install "tevia[ray]"') from None
        try:
            resolve_model(args.model)
        except FileNotFoundError as error:
            raise ValueError(str(error)) from None


def select_part(items: list, num_parts: int, part_id: int) -> list:
    """The ``part_id``-th of ``num_parts`` static parts: every ``num_parts``-th item from ``part_id`` on."""
    return items[part_id::num_parts]


def status_path(out: Path, num_parts: int = 1, part_id: int = 0) -> Path:
    """The status file of a run (one per part when the cohort is split)."""
    return out / ("tevia-status.csv" if num_parts == 1 else f"tevia-status-part{part_id}-of-{num_parts}.csv")


def previous_status(out: Path) -> dict[str, dict[str, str]]:
    """The last "done" or "failed" row of each input over every status file in ``out`` (in the
    order written; a "skipped" row only repeats an earlier outcome)."""
    rows: list[dict[str, str]] = []
    for path in sorted(out.glob("tevia-status*.csv")):
        with path.open(newline="", encoding="utf-8") as handle:
            rows += [row for row in csv.DictReader(handle) if row.get("input") and row.get("status") != "skipped"]
    rows.sort(key=lambda row: row.get("finished", ""))
    return {row["input"]: row for row in rows}


class StatusFile:
    """Appends one row per finished case, flushed to disk at once (a killed run keeps its rows)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        new = not path.exists() or path.stat().st_size == 0
        self._handle = path.open("a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._handle, fieldnames=STATUS_FIELDS)
        if new:
            self._writer.writeheader()

    def record(self, outcome: CaseOutcome) -> None:
        self._writer.writerow({"input": outcome.input, "output": outcome.output, "status": outcome.status,
                               "message": outcome.message, "seconds": f"{outcome.seconds:.2f}",
                               "finished": outcome.finished})
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


def _skip_reason(case, previous: dict[str, dict[str, str]], retry_failed: bool) -> str | None:
    row = previous.get(str(case.input))
    if row is None:
        return None
    if row["status"] == "done" and row["output"] == str(case.output) and Path(row["output"]).exists():
        return "done before"
    if row["status"] == "failed" and not retry_failed:
        return f"failed before ({row['message']}); --retry-failed segments it again"
    return None


def _run_local(cases: list, session: InferenceSession, options: SegmentOptions) -> Iterable[CaseOutcome]:
    for case in cases:
        yield segment_case(session, str(case.input), list(case.prompts), str(case.output), options)


def run_cohort(args: argparse.Namespace, cases: list, options: SegmentOptions,
               session: InferenceSession | None) -> int:
    """Segment this run's part of a cohort, writing a status row per case.

    Args:
        args: the parsed ``tevia predict`` options.
        cases: every case of the cohort (tevia.commands.predict.Case), in a fixed order.
        options: the segmentation options.
        session: the loaded model for ``--engine local`` (None for ``ray``: its actors load it).

    Returns:
        0 when every case of the part is done (now or before), 1 when one failed (now or before).
    """
    cases = select_part(cases, args.num_parts, args.part_id)
    previous = previous_status(args.out)
    status = StatusFile(status_path(args.out, args.num_parts, args.part_id))
    todo, failures = [], 0
    try:
        for case in cases:
            reason = _skip_reason(case, previous, args.retry_failed)
            if reason is None:
                todo.append(case)
            else:
                status.record(CaseOutcome(str(case.input), str(case.output), "skipped", reason))
                failures += reason.startswith("failed")
        log.info("%d case(s) in this part: %d to segment, %d skipped (see %s)", len(cases), len(todo),
                 len(cases) - len(todo), status.path)
        if args.engine == "ray":
            from tevia.commands.cohort_ray import run_ray

            outcomes = run_ray(todo, args, options)
        else:
            outcomes = _run_local(todo, session, options)
        for outcome in tqdm(outcomes, total=len(todo), desc="cases", unit="case", file=sys.stderr):
            status.record(outcome)
            if outcome.status == "failed":
                failures += 1
                tqdm.write(f"ERROR: {outcome.input}: {outcome.message}", file=sys.stderr)
    finally:
        status.close()
    if failures:
        print(f"tevia predict: {failures} of {len(cases)} case(s) failed (see {status.path})", file=sys.stderr)
    return 1 if failures else 0
