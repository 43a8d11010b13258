"""Fine-tune from Slicer: `tevia train --init <model>` on an exported training set, in the background.

The job never runs the model in Slicer's process. It:
1. splits the set exported by "Add to training set" (TeViASegmentLib.training_export) by
   volume, never by slice (neighbouring slices are near copies): whole volumes are held out
   for validation, and the split is copied into a work folder;
2. runs, one after another, each as its own process (PythonSlicer, process tree ended on
   cancel): `tevia evaluate` of the current model on the held-out volumes (and on a
   reference set, to detect forgetting), `tevia train --init <current model>`, and the same
   evaluations of the new model; progress per epoch comes from the trainer's
   "epoch N/M val_dice D" log lines;
3. only when all of them succeeded, writes the new model folder into the per-user models
   folder (tevia.user_models) as ``<name>-<version>``: model.json with its version and parent
   model, and a model card README.md with the data counts and Dice before and after. Earlier
   versions stay there and stay choosable. A failed or cancelled job leaves nothing there.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import finetune_card, jobs
from .training_export import CSV_COLUMNS
from .worker_client import default_python, kill_process_tree

__all__ = ["FineTuneJob", "FineTuneSettings", "split_by_volume", "reference_set", "settings_from_parameters",
           "slices_per_volume", "EPOCH_LINE"]

logger = logging.getLogger(__name__)

EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+) val_dice ([0-9.]+)")
MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([\w.]+)'")
TRAIN_REQUIREMENTS = Path(__file__).resolve().parents[1] / "Resources" / "requirements-train.txt"


@dataclass
class FineTuneSettings:
    """What the fine-tune job does.

    Attributes:
        epochs: training epochs (the best epoch on the held-out volumes is kept).
        batch_size, lr: optimisation.
        threads: CPU threads of each child process.
        holdout_fraction: share of the volumes held out for validation (at least one volume).
        seed: the seed of the volume split.
        name: the new model's name; "<parent name>-finetuned" when empty.
        reference_data, reference_split: a data set folder and split (CSV + folders layout,
            descriptions in the model's convention) the model was good on, measured before and
            after to detect forgetting; none when empty.
        reference_limit: measure only the first N reference rows (None: all).
        device: "auto", "cpu" or "cuda" for the children.
    """

    epochs: int = 5
    batch_size: int = 8
    lr: float = 2e-4
    threads: int = 2
    holdout_fraction: float = 0.25
    seed: int = 0
    name: str = ""
    reference_data: str = ""
    reference_split: str = "val"
    reference_limit: int | None = None
    device: str = "auto"


def reference_set(path: str | Path) -> tuple[str, str]:
    """The reference set a path names, as (data set folder, split).

    A split's CSV names its folder and split (``qata-cov19/val.csv``: that folder and "val"); a
    data set folder names its "val" split; an empty path (or ".", what an empty path field
    holds) names none: ("", "val").

    Raises:
        ValueError: the path is neither an existing CSV file nor a folder holding val.csv.
    """
    text = str(path).strip()
    if text in ("", "."):
        return "", "val"
    path = Path(text)
    if path.is_file() and path.suffix.lower() == ".csv":
        return str(path.parent), path.stem
    if path.is_dir() and (path / "val.csv").is_file():
        return str(path), "val"
    raise ValueError(f"the reference set {path} is neither a split's CSV file nor a folder holding val.csv: choose "
                     "the CSV of a data set the model was good on (CSV + folders layout, e.g. qata-cov19/val.csv), "
                     "or leave the field empty to measure no reference set")


def settings_from_parameters(parameters) -> FineTuneSettings:
    """The job's settings from the module's parameter node (`parameters.TeViASegmentParameters`):
    its `fineTuneEpochs` and its reference set `fineTuneReference` (see `reference_set`).

    Raises:
        ValueError: fewer than one epoch, or a reference set that `reference_set` refuses.
    """
    epochs = int(parameters.fineTuneEpochs)
    if epochs < 1:
        raise ValueError(f"fine-tuning needs at least 1 epoch, got {epochs}")
    data, split = reference_set(parameters.fineTuneReference)
    return FineTuneSettings(epochs=epochs, reference_data=data, reference_split=split)


def _read_rows(csv_path: Path) -> list[dict[str, str]]:
    if not csv_path.is_file():
        raise ValueError(f"{csv_path} does not exist: add segments to the training set first")
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise ValueError(f"{csv_path} has columns {reader.fieldnames}, expected {list(CSV_COLUMNS)}: "
                             "fine-tuning takes a set made with 'Add to training set'")
        return list(reader)


def slices_per_volume(dataset_dir: str | Path) -> dict[str, int]:
    """How many corrected slices a training set made with "Add to training set" holds for each
    volume (one scan: one acquisition), in the order the volumes were first added.

    Raises:
        ValueError: no train.csv, or one with other columns.
    """
    counts: dict[str, int] = {}
    for row in _read_rows(Path(dataset_dir) / "train.csv"):
        counts[row["Volume"]] = counts.get(row["Volume"], 0) + 1
    return counts


def split_by_volume(rows: list[dict[str, str]], holdout_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Volumes to train on and volumes to hold out (never split by slice).

    Returns:
        (training volumes, held-out volumes), each sorted.

    Raises:
        ValueError: fewer than two volumes, or a fraction outside (0, 1).
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be between 0 and 1, got {holdout_fraction}")
    volumes = sorted({row["Volume"] for row in rows})
    if len(volumes) < 2:
        raise ValueError(f"the training set holds slices of {len(volumes)} volume(s); fine-tuning holds out whole "
                         "volumes for validation, so add segments of at least two volumes")
    random.Random(seed).shuffle(volumes)
    count = min(len(volumes) - 1, max(1, round(len(volumes) * holdout_fraction)))
    return sorted(volumes[count:]), sorted(volumes[:count])


def _copy_split(dataset: Path, rows: list[dict[str, str]], out: Path, split: str) -> None:
    """Copy rows and their files into out/<split>.csv and out/<Split>/{Images,GTs}."""
    for sub in ("Images", "GTs"):
        (out / split.capitalize() / sub).mkdir(parents=True, exist_ok=True)
    for row in rows:
        image = row["Image"]
        shutil.copy2(dataset / "Train" / "GTs" / image, out / split.capitalize() / "GTs" / image)
        shutil.copy2(dataset / "Train" / "Images" / image.removeprefix("mask_"), out / split.capitalize() / "Images")
    with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _next_version(name: str, models_dir: Path) -> str:
    from tevia.user_models import list_user_models, version_key

    versions = [m.version for m in list_user_models(models_dir) if m.name == name and m.version.isdigit()]
    return str(int(max(versions, key=version_key)) + 1) if versions else "1"


class FineTuneJob(jobs.SegmentJob):
    """A fine-tune running in child processes; poll it from a timer, cancel it any time.

    `result` (when done) is the new model folder. on_progress gets ("evaluate", step, steps)
    and ("epoch", epoch, epochs).

    Args:
        dataset_dir: a set made with "Add to training set" (its train.csv).
        parent: the current model's folder.
        settings: the job's `FineTuneSettings`.
        python: interpreter of the children (PythonSlicer in Slicer).
        models_dir: where the new model goes (`tevia.user_models.user_models_dir()` when None).
        module_dir: folder holding `tevia/`, put on the children's PYTHONPATH.
    """

    def __init__(self, dataset_dir: str | Path, parent: str | Path, settings: FineTuneSettings | None = None,
                 python: str | None = None, models_dir: str | Path | None = None,
                 module_dir: str | Path | None = None, **callbacks) -> None:
        super().__init__(importer=lambda *args: None, **callbacks)
        self.settings = settings or FineTuneSettings()
        self.dataset_dir, self.parent = Path(dataset_dir), Path(parent)
        if models_dir is None:
            from tevia.user_models import user_models_dir

            models_dir = user_models_dir()
        self.models_dir = Path(models_dir)
        self.python = python or default_python()
        self.module_dir = Path(module_dir) if module_dir else Path(__file__).resolve().parents[1]
        self.parent_info = json.loads((self.parent / "model.json").read_text(encoding="utf-8"))
        self.name = self.settings.name or f"{self.parent_info.get('name', self.parent.name)}-finetuned"
        rows = _read_rows(self.dataset_dir / "train.csv")
        train_volumes, held_out = split_by_volume(rows, self.settings.holdout_fraction, self.settings.seed)
        self.work = Path(tempfile.mkdtemp(prefix="TeViA-finetune-"))
        self.log_path = self.work / "log.txt"
        try:
            data = self.work / "data"
            _copy_split(self.dataset_dir, [r for r in rows if r["Volume"] in train_volumes], data, "train")
            _copy_split(self.dataset_dir, [r for r in rows if r["Volume"] in held_out], data, "val")
            self.counts = {"train_volumes": train_volumes, "held_out_volumes": held_out,
                           "train_slices": sum(r["Volume"] in train_volumes for r in rows),
                           "held_out_slices": sum(r["Volume"] in held_out for r in rows)}
            self._steps = self._plan(data)
        except Exception:
            shutil.rmtree(self.work, ignore_errors=True)
            raise
        self._step = -1
        self._process: subprocess.Popen | None = None
        self._log_offset = 0
        self._start_next()

    def _plan(self, data: Path) -> list[tuple[str, list[str]]]:
        s, new = self.settings, str(self.work / "run" / "model")
        config = {
            "model": {**self.parent_info["config"], "vision": {**self.parent_info["config"]["vision"], "pretrained": False}},
            "data": {"root": str(data), "train_split": "train", "val_split": "val", "cache": True},
            "train": {"max_epochs": s.epochs, "batch_size": s.batch_size, "lr": s.lr, "threads": s.threads,
                      "prototype_warmup_epochs": 1, "early_stopping_patience": max(2, s.epochs),
                      "out_dir": str(self.work / "run"), "model_name": self.name,
                      "modality": self.parent_info.get("modality", ""), "licence": self.parent_info.get("licence", "")},
        }
        (self.work / "config.yaml").write_text(json.dumps(config, indent=2))  # JSON is YAML
        steps = [("held_out_before", self._evaluate(str(self.parent), str(data), "val", None, "held_out_before"))]
        if s.reference_data:
            steps.append(("reference_before", self._evaluate(str(self.parent), s.reference_data, s.reference_split,
                                                             s.reference_limit, "reference_before")))
        steps.append(("train", [self.python, "-m", "tevia", "train", "--config", str(self.work / "config.yaml"),
                                "--init", str(self.parent)]))
        steps.append(("held_out_after", self._evaluate(new, str(data), "val", None, "held_out_after")))
        if s.reference_data:
            steps.append(("reference_after", self._evaluate(new, s.reference_data, s.reference_split,
                                                            s.reference_limit, "reference_after")))
        return steps

    def _evaluate(self, model: str, data: str, split: str, limit: int | None, name: str) -> list[str]:
        command = [self.python, "-m", "tevia", "evaluate", "--model", model, "--data", data, "--split", split,
                   "--out", str(self.work / "eval" / name), "--no-hd95", "--eval-size", "0", "0",
                   "--device", self.settings.device]
        return command + (["--limit", str(limit)] if limit else [])

    def _start_next(self) -> None:
        self._step += 1
        name, command = self._steps[self._step]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(self.settings.threads),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(self.module_dir), os.environ.get("PYTHONPATH")]))}
        flags = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt" else {"start_new_session": True}
        with open(self.log_path, "a", encoding="utf-8") as log_file:
            log_file.write(f"== {name}: {' '.join(command)}\n")
            log_file.flush()
            self._process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             env=env, **flags)
        logger.info("Fine-tune step %s (pid %d)", name, self._process.pid)
        if name != "train":
            self._progress("evaluate", self._step, len(self._steps))

    @property
    def pid(self) -> int | None:
        """The running child's process id."""
        return None if self._process is None else self._process.pid

    def poll(self, timeout_s: float = 0.0) -> bool:
        if not self.running:
            return False
        if timeout_s > 0:
            time.sleep(timeout_s)
        self._read_progress()
        returncode = self._process.poll()
        if returncode is None:
            return True
        name = self._steps[self._step][0]
        if returncode != 0:
            self._finish("failed", f"Fine-tuning failed in step {name} (exit code {returncode}).{self._missing_packages()}"
                                   f"{self._log_tail()}")
        elif self._step + 1 < len(self._steps):
            self._start_next()
        else:
            try:
                self.result = self._publish()
            except (OSError, ValueError, KeyError) as error:
                self._finish("failed", f"The fine-tuned model could not be saved: {error}")
            else:
                self._finish("done")
        return self.running

    def _read_progress(self) -> None:
        with open(self.log_path, "rb") as handle:
            handle.seek(self._log_offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]  # whole lines only; the rest is read next time
        self._log_offset += len(complete)
        for match in EPOCH_LINE.finditer(complete.decode("utf-8", errors="replace")):
            self._progress("epoch", int(match.group(1)), int(match.group(2)))

    def _missing_packages(self) -> str:
        missing = MISSING_MODULE.findall(self.log_path.read_text(encoding="utf-8", errors="replace"))
        if not missing:
            return ""
        return (f" The Python that runs it ({self.python}) lacks {', '.join(sorted(set(missing)))}: install the "
                f"training packages with `pip install -r {TRAIN_REQUIREMENTS}` (in Slicer's Python console: "
                f"slicer.util.pip_install('-r {TRAIN_REQUIREMENTS}')).")

    def _log_tail(self) -> str:
        lines = [line for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        return " Last output:\n" + "\n".join(lines[-8:]) if lines else ""

    def cancel(self) -> None:
        """End the running child and every process it started; nothing is written."""
        if not self.running:
            return
        if self._process is not None:
            kill_process_tree(self._process)
        self._finish("cancelled")

    def _metrics(self, name: str) -> dict | None:
        path = self.work / "eval" / name / "metrics.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def _publish(self) -> Path:
        """Move the new model into the models folder with its version, parent and card."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        version = _next_version(self.name, self.models_dir)
        folder = self.work / "run" / "model"
        info = json.loads((folder / "model.json").read_text(encoding="utf-8"))
        evaluations = {name: self._metrics(name) for name, _ in self._steps if name != "train"}
        info.update(version=version, parent={"name": self.parent_info.get("name", ""),
                                             "version": self.parent_info.get("version", ""),
                                             "weights_sha256": self.parent_info.get("weights_sha256", "")},
                    fine_tuning={**self.counts, "dataset": str(self.dataset_dir), "epochs": self.settings.epochs,
                                 "evaluations": {k: finetune_card.summary(v) for k, v in evaluations.items()}})
        (folder / "model.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        (folder / "README.md").write_text(finetune_card.model_card(info, self.settings), encoding="utf-8")
        target = self.models_dir / f"{self.name}-{version}"
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=self.models_dir))
        try:  # copied next to its place, then renamed: never half there
            shutil.copytree(folder, staging / "model")
            os.replace(staging / "model", target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("Fine-tuned model saved as %s", target)
        return target

    def _cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
