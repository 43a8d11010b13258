"""``tevia predict``: segment one image/volume, or a cohort, from text prompts (one model load).

One input:  ``tevia predict --model M --input ct.nii.gz --text "liver" --out liver.nii.gz``
A folder:   ``tevia predict --model M --input-dir scans/ --text "liver" --out masks/ --format seg.nrrd``
A CSV:      ``tevia predict --model M --csv cases.csv --out masks/`` with columns ``input`` (paths
relative to the CSV's folder), optional ``text`` (prompts separated by ``|``, else ``--text``) and
optional ``output`` (relative to ``--out``). A cohort writes a status row per case and reruns skip
the cases done (tevia.commands.cohort); ``--engine ray`` runs it on Ray Data actors.
Outputs are named after their input's stem; inputs of a folder that share a stem (``a.png``,
``a.jpg``) keep their whole name (``a.png.nii.gz``), and CSV rows that name one output twice are
refused before any work: no case replaces another's output.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tevia.commands.cli import report_error
from tevia.commands.cohort import add_cohort_arguments, check_cohort_arguments, run_cohort
from tevia.commands.cohort_case import segment_case
from tevia.device import DEVICE_CHOICES, add_precision_argument
from tevia.prompts import CONVENTIONS
from tevia.inference.segment_options import SegmentOptions
from tevia.inference.session import InferenceSession, ModelLoadError
from tevia.volume.geometry import SLICE_AXES
from tevia.volume.io import READ_EXTENSIONS, file_extension
from tevia.volume.preprocess import WINDOWS
from tevia.volume.writers import FORMATS

__all__ = ["Case", "configure_parser", "collect_cases", "main"]

log = logging.getLogger("tevia.commands.predict")


@dataclass(frozen=True)
class Case:
    """One input to segment: where it is, its prompts, and where its labelmap goes."""

    input: Path
    prompts: tuple[str, ...]
    output: Path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``tevia predict`` options."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, help="an image/volume file or a DICOM series folder")
    source.add_argument("--input-dir", type=Path, help="a folder of inputs (files and DICOM series folders)")
    source.add_argument("--csv", type=Path, help="a CSV with columns input[, text][, output]")
    parser.add_argument("--model", default="default", help="bundled model name or model folder (default: default)")
    parser.add_argument("--text", action="append", default=[], help="a prompt (repeat for one label each)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output file for --input, output folder for --input-dir/--csv")
    parser.add_argument("--format", default="nii.gz", choices=list(FORMATS),
                        help="output format of cohort runs (default: nii.gz; dicom-seg: DICOM SEG of DICOM inputs)")
    parser.add_argument("--device", default="auto", help=f"{' | '.join(DEVICE_CHOICES)} | cuda:N (default: auto)")
    add_precision_argument(parser)
    parser.add_argument("--slice-axis", default="axial", choices=SLICE_AXES)
    parser.add_argument("--window", help=f"CT window: {', '.join(WINDOWS)} or 'center,width' (default: percentiles)")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--convention", default="patient", choices=CONVENTIONS,
                        help="do 'left'/'right' in the prompts name the patient's or the image's sides")
    parser.add_argument("--largest-component", action="store_true", help="keep each label's largest component")
    parser.add_argument("--fill-holes", action="store_true", help="fill in-plane holes")
    parser.add_argument("--min-size", type=int, default=0, help="drop components smaller than N voxels")
    add_cohort_arguments(parser)


def _case_name(path: Path) -> str:
    extension = file_extension(path) if path.is_file() else ""
    return path.name[: len(path.name) - len(extension)] if extension else path.name


def collect_cases(args: argparse.Namespace) -> list[Case]:
    """The cases of a run, from --input, --input-dir or --csv (raises ValueError when bad)."""
    prompts = tuple(args.text)
    extension = FORMATS[args.format]
    if args.input is not None:
        if not prompts:
            raise ValueError("give at least one --text prompt")
        return [Case(args.input, prompts, args.out)]
    if args.input_dir is not None:
        if not args.input_dir.is_dir():
            raise ValueError(f"--input-dir {args.input_dir} is not a folder")
        if not prompts:
            raise ValueError("give at least one --text prompt")
        entries = sorted(p for p in args.input_dir.iterdir()
                         if p.is_dir() or file_extension(p) in READ_EXTENSIONS)
        stems = Counter(_case_name(p) for p in entries)
        # Inputs that share a stem (a.png and a.jpg) keep their whole file name in the output's.
        return _distinct_outputs([Case(p, prompts, args.out / ((_case_name(p) if stems[_case_name(p)] == 1
                                                                 else p.name) + extension)) for p in entries])
    if not args.csv.is_file():
        raise ValueError(f"--csv {args.csv} is not a file")
    with args.csv.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "input" not in rows[0]:
        raise ValueError(f"--csv {args.csv} needs a header with an 'input' column (and optional text, output)")
    cases = []
    for number, row in enumerate(rows, start=2):
        texts = tuple(t.strip() for t in (row.get("text") or "").split("|") if t.strip()) or prompts
        if not texts:
            raise ValueError(f"{args.csv} line {number}: no text and no --text prompt")
        source = args.csv.parent / row["input"]
        output = args.out / (row.get("output") or (_case_name(source) + extension))
        cases.append(Case(source, texts, output))
    return _distinct_outputs(cases)


def _distinct_outputs(cases: list[Case]) -> list[Case]:
    """The cases, or a ValueError when two of them would write the same output file."""
    seen: dict[Path, Path] = {}
    for case in cases:
        if case.output in seen:
            raise ValueError(f"{seen[case.output]} and {case.input} would both be written to {case.output}: "
                             f"give each row its own 'output' in the --csv table")
        seen[case.output] = case.input
    return cases


def main(args: argparse.Namespace) -> int:
    """Run ``tevia predict``; returns 0 when every case succeeded, 1 otherwise, 2 on bad arguments."""
    session = InferenceSession(1024**3)
    try:
        options = SegmentOptions(slice_axis=args.slice_axis, threshold=args.threshold, batch_size=args.batch_size,
                                 window=args.window, largest_component=args.largest_component,
                                 fill_holes=args.fill_holes, min_size=args.min_size, convention=args.convention)
        cases = collect_cases(args)
        check_cohort_arguments(args)
        model = session.load(args.model, args.device, args.precision) if args.engine == "local" else None
    except (ValueError, ModelLoadError) as error:
        return report_error("predict", error)
    cohort = args.input is None
    (args.out if cohort else args.out.parent).mkdir(parents=True, exist_ok=True)
    if model is not None:
        log.info("model %s (%s %s) on %s; %d case(s)", args.model, model["name"], model["version"],
                 model["device_name"], len(cases))
    if cohort:
        return run_cohort(args, cases, options, session)
    (case,) = cases
    outcome = segment_case(session, str(case.input), list(case.prompts), str(case.output), options)
    if outcome.status == "failed":
        print(f"ERROR: {case.input}: {outcome.message}", file=sys.stderr)
        return 1
    return 0
