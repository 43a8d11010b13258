"""The module panel's Fine-tune action: start with the parameter node's settings, show progress,
cancel, and choose the new model in the model list once it is ready.

The Widget builds the UI and hands this panel the widgets it needs; the panel calls
`logic.fineTuneAsync` with `finetune.settings_from_parameters` and follows the job (polled from
the Widget's timer through `poll`).

Qt is used only through `connect_widgets` and the error displays of `toggle` and a failed job:
the rest runs on any object with the widgets' Python properties, as the tests do.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import slicer.util
from TeViASegmentLib.finetune import settings_from_parameters, slices_per_volume
from TeViASegmentLib.finetune_card import held_out_change

__all__ = ["FineTunePanel"]


class FineTunePanel:
    """Fine-tunes the chosen model on the data set folder, and cancels on request.

    Args:
        logic: the module's `TeViASegmentLogic` (`fineTuneAsync`, `fineTuneJob`).
        ui: the Widget's `ui` namespace: `fineTuneButton`.
        parameter_node: returns the parameter node (`datasetFolder`, `fineTuneEpochs`,
            `fineTuneReference`).
        current_model: returns the model chosen in the model list.
        select_model: chooses a model in the model list (the new model, once ready).
        on_progress: called with (stage, done, total) while the job runs.
        on_message: called with each message for the user.
        on_busy: called when a fine-tune starts (start the poll timer: `poll`).
    """

    def __init__(self, logic, ui, parameter_node: Callable[[], object], current_model: Callable[[], str],
                 select_model: Callable[[str], None], on_progress: Callable[[str, int, int], None],
                 on_message: Callable[[str], None], on_busy: Callable[[], None]) -> None:
        self.logic = logic
        self.ui = ui
        self.parameter_node = parameter_node
        self.current_model = current_model
        self.select_model = select_model
        self.on_progress = on_progress
        self.on_message = on_message
        self.on_busy = on_busy

    def connect_widgets(self) -> None:
        self.ui.fineTuneButton.clicked.connect(self.toggle)

    @property
    def running(self) -> bool:
        return self.logic.fineTuneJob is not None and self.logic.fineTuneJob.running

    def toggle(self) -> None:
        """Start fine-tuning (or, while it runs, cancel it)."""
        if self.running:
            self.logic.fineTuneJob.cancel()
            return
        with slicer.util.tryWithErrorDisplay("Could not start fine-tuning.", waitCursor=True):
            self.start()

    @staticmethod
    def training_set_summary(folder: str | Path) -> str:
        """What a training set folder holds, per scan (each volume is one acquisition), e.g.
        "The training set holds 128 corrected slices: radiopaedia-1 11, radiopaedia-2 117.";
        "" when the folder holds no training set yet.

        Raises:
            ValueError: a train.csv that "Add to training set" did not make (other columns).
        """
        if not (Path(folder) / "train.csv").is_file():
            return ""
        counts = slices_per_volume(folder)
        scans = ", ".join(f"{volume} {count}" for volume, count in counts.items())
        return f"The training set holds {sum(counts.values())} corrected slices: {scans}."

    def start(self) -> None:
        """Start fine-tuning the chosen model on the data set folder in the background.

        Raises:
            ValueError: bad settings or training set (`settings_from_parameters`,
                `logic.fineTuneAsync`); nothing starts.
        """
        node = self.parameter_node()
        folder, model = str(node.datasetFolder), self.current_model()
        self.logic.fineTuneAsync(folder, model, settings_from_parameters(node), onProgress=self.on_progress,
                                 onDone=self.on_done)
        self.ui.fineTuneButton.text = "Cancel fine-tuning"
        self.on_message(f"Fine-tuning {model} on {folder}... {self.training_set_summary(folder)}")
        self.on_busy()

    def poll(self) -> bool:
        """Follow the job; whether it is still running."""
        return self.logic.fineTuneJob is not None and self.logic.fineTuneJob.poll()

    def on_done(self, job) -> None:
        """The job ended: choose the new model, or say why there is none."""
        self.ui.fineTuneButton.text = "Fine-tune"
        if job.state == "done":
            self.select_model(job.result.name)
            info = json.loads((job.result / "model.json").read_text(encoding="utf-8"))
            self.on_message(f"Fine-tuned model {job.result.name} is ready (model card: {job.result / 'README.md'}). "
                            f"{held_out_change(info)}".strip())
        elif job.state == "failed":
            slicer.util.errorDisplay(job.error)
        else:
            self.on_message("Fine-tuning cancelled; nothing was saved.")
