"""``tevia predict --engine ray``: a cohort streamed through Ray Data model actors.

Each of ``--workers`` actors (``--threads`` CPUs, ``--gpus-per-worker`` GPUs each) loads the
model once and segments one case at a time through the same code as the local engine
(tevia.commands.cohort_case.segment_case: read, segment, write the output and its sidecar), so the
outputs are the local engine's. Ray Data streams the cases to whichever actor is free; the
outcomes come back to this process as they finish, for the status file and the progress bar.
Ray starts here (or joins ``--ray-address``) and stops again when this run started it.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import numpy as np

from tevia.commands.cohort_case import CaseOutcome, segment_case
from tevia.inference.segment_options import SegmentOptions

__all__ = ["CohortWorker", "run_ray"]

_PROMPT_SEPARATOR = "\x1f"  # prompts travel as one string per case (a column of strings, not of lists)


class CohortWorker:
    """A Ray Data actor: the model loaded once, one case per call.

    Args:
        model, device, precision: as ``tevia predict``.
        threads: torch CPU threads of this actor.
        options: the segmentation options.
    """

    def __init__(self, model: str, device: str, precision: str, threads: int, options: SegmentOptions) -> None:
        import torch

        from tevia.inference.session import InferenceSession

        torch.set_num_threads(threads)
        self.session = InferenceSession(1024**3)
        self.session.load(model, device, precision)
        self.options = options

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        outcomes = [segment_case(self.session, str(source), str(prompts).split(_PROMPT_SEPARATOR), str(output),
                                 self.options)
                    for source, prompts, output in zip(batch["input"], batch["prompts"], batch["output"])]
        return {"input": [o.input for o in outcomes], "output": [o.output for o in outcomes],
                "status": [o.status for o in outcomes], "message": [o.message for o in outcomes],
                "seconds": [o.seconds for o in outcomes], "finished": [o.finished for o in outcomes]}


def run_ray(cases: list, args: argparse.Namespace, options: SegmentOptions) -> Iterator[CaseOutcome]:
    """Segment ``cases`` on Ray Data actors; yields each case's outcome as it finishes."""
    if not cases:
        return
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=False)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the run's own bar counts cases
        items = [{"input": str(case.input), "prompts": _PROMPT_SEPARATOR.join(case.prompts),
                  "output": str(case.output)} for case in cases]
        workers, threads = args.workers or 1, args.threads or 1
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            CohortWorker, batch_size=1, concurrency=workers, num_cpus=threads,
            num_gpus=args.gpus_per_worker or None,
            fn_constructor_kwargs={"model": str(args.model), "device": args.device, "precision": args.precision,
                                   "threads": threads, "options": options})
        for row in dataset.iter_rows():
            yield CaseOutcome(str(row["input"]), str(row["output"]), str(row["status"]), str(row["message"]),
                              float(row["seconds"]), str(row["finished"]))
    finally:
        if started:
            ray.shutdown()
