"""The click-editing loop: each placed point re-runs its segment on its slice, in the background.

A point placed in a segment's click list (`clicks.click_lists`) is checked (it must lie on the
volume), then queued; runs go to the warm worker one at a time (`logic.refineAsync`, never
blocking Slicer), each with the segment's clicks *on that point's slice* only, and its result
replaces only that segment's voxels on the slices the worker refined (`refined_slices`). Other
segments, and this segment on every other slice (manual edits included), are never touched:
clicks on other slices are not sent, so their slices are not refined again.

Undo keeps, for each applied click, the segment's voxels on the slices it replaced, taken just
before. Removing a point (`undo`, or deleting it in the Markups module) that is the last click
on its slices restores those voxels exactly, at once, without the worker: exact even where the
user edited the slice by hand before clicking, and what the user saw before is what they get
back. Removing an earlier point (later clicks changed its slices since) re-runs its slice with
the clicks that remain there, and the later clicks on those slices lose their saved voxels,
which held the removed point's effect (their removal then re-runs too). Where no click is left
on a slice, it gets back exactly what it held before its first click (kept per slice; the
worker is not asked: a text-only run of one prompt would differ from the first run's, where
the segment's prompt competed with the others for each voxel).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import slicer
from TeViASegmentLib import clicks, slice_edits

__all__ = ["ClickEditor"]

logger = logging.getLogger(__name__)


@dataclass
class _Step:
    """An applied click: the slices it replaced and the segment's voxels there before."""

    key: tuple[str, str]  # (segmentation node ID, segment ID)
    point: tuple[str, str]  # (list ID, point ID)
    location: clicks.SliceLocation
    slices: list[int]
    previous: np.ndarray | None


@dataclass
class _Run:
    """A queued re-run of one segment on one slice; `point` is the click that asked for it
    (None: a re-run after an earlier point was removed, applied to `restore_slices` too)."""

    key: tuple[str, str]
    location: clicks.SliceLocation
    point: tuple[str, str] | None
    restore_slices: list[int] = field(default_factory=list)


class ClickEditor:
    """Positive and negative clicks on TeViA segments, with background re-runs and undo.

    Args:
        logic: the module's `TeViASegmentLogic` (its worker and job slot are shared).
        app_logic: the application logic (its interaction and selection nodes);
            `slicer.app.applicationLogic()` when None.
        on_message: called with each message for the user (refused points, results, errors).
        on_busy: called when a run is queued (start polling: `poll`).
    """

    def __init__(self, logic, app_logic=None, on_message: Callable[[str], None] | None = None,
                 on_busy: Callable[[], None] | None = None) -> None:
        self.logic = logic
        self.app_logic = app_logic if app_logic is not None else slicer.app.applicationLogic()
        self.on_message = on_message or (lambda message: None)
        self.on_busy = on_busy or (lambda: None)
        self.settings: dict = {}
        self.target: tuple | None = None  # (volume node, segmentation node, segment ID)
        self.steps: list[_Step] = []
        self._order: list[tuple[tuple[str, str], tuple[str, str]]] = []  # (key, point) in placement order
        # list ID -> (the list node, its segment's key, its volume node, observer tags)
        self._lists: dict[str, tuple[object, tuple[str, str], object, list[int]]] = {}
        self._bases: dict[tuple, np.ndarray] = {}  # (key, IJK axis, slice) -> the slice before its first click
        self._queue: deque[_Run] = deque()
        self._run: _Run | None = None
        self._job = None

    def set_target(self, volume_node, segmentation_node, segment_id: str, **settings) -> tuple[object, object]:
        """Choose the segment that clicks go to; `settings` are refineAsync's model, device,
        options and precision. Returns its (positive, negative) click lists.

        Raises:
            ValueError: no volume, or a segment that is not in the segmentation.
        """
        if volume_node is None or segmentation_node is None or not segment_id:
            raise ValueError("Choose the volume and a TeViA segment to correct first")
        lists = clicks.click_lists(segmentation_node, segment_id)
        key = (segmentation_node.GetID(), segment_id)
        for node in lists:
            if node.GetID() not in self._lists:
                tags = [node.AddObserver(node.PointPositionDefinedEvent, self._on_defined),
                        node.AddObserver(node.PointRemovedEvent, self._on_removed)]
                self._lists[node.GetID()] = (node, key, volume_node, tags)
        self.target, self.settings = (volume_node, segmentation_node, segment_id), dict(settings)
        return lists

    def _target_lists(self) -> tuple[object, object]:
        if self.target is None:
            raise ValueError("Choose the volume and a TeViA segment to correct first")
        return clicks.click_lists(self.target[1], self.target[2])

    def place(self, positive: bool, world: tuple[float, float, float]) -> str:
        """Place a click at a world point (the console's and tests' way; the views place points
        into the lists directly). Returns its point ID.

        Raises:
            ValueError: no target, or the point lies outside the volume (nothing is changed).
        """
        node = self._target_lists()[0 if positive else 1]
        clicks.locate_click(self.target[0], clicks.volume_ras(self.target[0], world), self._slice_axis())
        return node.GetNthControlPointID(node.AddControlPointWorld(*world))

    def start_placement(self, positive: bool) -> None:
        """Place positive (True) or negative points with the mouse until `stop_placement`."""
        clicks.start_placement(self.app_logic, self._target_lists()[0 if positive else 1])

    def stop_placement(self) -> None:
        clicks.stop_placement(self.app_logic)

    def undo(self) -> bool:
        """Remove the target segment's last placed click (its effect is undone, see the module
        docstring); False when it has none."""
        key = None if self.target is None else (self.target[1].GetID(), self.target[2])
        for point_key, (list_id, point_id) in reversed(self._order):
            if point_key == key:
                node = self._lists[list_id][0]
                node.RemoveNthControlPoint(node.GetControlPointIndexByID(point_id))
                return True
        return False

    @property
    def busy(self) -> bool:
        return self._run is not None or bool(self._queue)

    def poll(self) -> bool:
        """Process the running re-run's events and start the next queued one when the worker
        is free; True while runs are running or queued."""
        if self._job is not None and self._job.running:
            self._job.poll()
        if self._run is None and self._queue and (self.logic.job is None or not self.logic.job.running):
            self._start(self._queue.popleft())
        return self.busy

    def wait(self, timeout_s: float = 300.0) -> None:
        """Block until every queued run has ended (the console's and tests' way)."""
        deadline = time.monotonic() + timeout_s
        while self.poll():
            if time.monotonic() > deadline:
                raise TimeoutError(f"Click runs did not finish within {timeout_s} s")
            if self._job is not None and self._job.running:
                self._job.poll(timeout_s=0.1)

    def clear(self) -> None:
        """Stop observing the click lists and forget the undo history and queued runs (the
        lists and their points stay in the scene); a running run is cancelled."""
        if self._job is not None:
            self._job.cancel()
        for node, _, _, tags in self._lists.values():
            for tag in tags:
                node.RemoveObserver(tag)
        self._lists.clear()
        self.steps, self._order, self._bases, self.target = [], [], {}, None
        self._queue.clear()
        self._run = self._job = None

    def _slice_axis(self) -> str:
        return self.settings.get("options", {}).get("slice_axis", "axial")

    def _known(self, list_id: str) -> set[str]:
        return {point_id for _, (lid, point_id) in self._order if lid == list_id}

    def _on_defined(self, node, _event=None) -> None:
        _, key, volume_node, _ = self._lists[node.GetID()]
        known = self._known(node.GetID())
        for click in clicks.placed_clicks(node, volume_node):
            if click.point_id in known:
                continue
            try:
                location = clicks.locate_click(volume_node, click.ras, self._slice_axis())
            except ValueError as error:
                self.on_message(f"{error}. The point was removed.")
                node.RemoveNthControlPoint(node.GetControlPointIndexByID(click.point_id))
                continue
            self._order.append((key, (node.GetID(), click.point_id)))
            self._queue.append(_Run(key, location, (node.GetID(), click.point_id)))
            self.on_busy()

    def _on_removed(self, node, _event=None) -> None:
        present = {node.GetNthControlPointID(n) for n in range(node.GetNumberOfControlPoints())}
        for _, point in reversed(list(self._order)):  # the latest first: each is then the last on its slices
            if point[0] == node.GetID() and point[1] not in present:
                self._removed(point)

    def _removed(self, point: tuple[str, str]) -> None:
        self._order = [entry for entry in self._order if entry[1] != point]
        queued = [run for run in self._queue if run.point == point]
        if queued:
            self._queue.remove(queued[0])
            return
        if self._run is not None and self._run.point == point:
            self._job.cancel()
            return
        step = next((s for s in self.steps if s.point == point), None)
        if step is None:
            return
        index = self.steps.index(step)
        later = [s for s in self.steps[index + 1:] if s.key == step.key and set(s.slices) & set(step.slices)]
        del self.steps[index]
        run = _Run(step.key, step.location, None, step.slices)
        remaining = self._slice_clicks(run)
        if not later and step.previous is not None:
            self._restore(step)
            for s in [] if remaining else step.slices:  # no click left there: the next click keeps them anew
                self._bases.pop((step.key, step.location.refined_axis, s), None)
            return
        for s in later:
            s.previous = None
        if remaining:
            self._queue.append(run)
            self.on_busy()
        else:
            self._restore_bases(step.key, step.location.refined_axis, step.slices)

    def _restore(self, step: _Step) -> None:
        volume_node, segmentation_node = self._nodes(step.key)
        slice_edits.set_segment_slices(step.previous, step.location.refined_axis, step.slices, volume_node,
                                 segmentation_node, step.key[1])
        self.on_message(f"Click undone: slices {step.slices} restored.")

    def _restore_bases(self, key: tuple[str, str], axis: int, slices: list[int]) -> None:
        """Give slices back what they held before their first click (and forget it)."""
        kept = [s for s in slices if (key, axis, s) in self._bases]
        if not kept:
            return
        volume_node, segmentation_node = self._nodes(key)
        masks = np.concatenate([self._bases.pop((key, axis, s)) for s in kept], axis=2 - axis)
        slice_edits.set_segment_slices(masks, axis, kept, volume_node, segmentation_node, key[1])
        self.on_message(f"Clicks undone: slices {kept} restored to what they held before their first click.")

    def _nodes(self, key: tuple[str, str]) -> tuple[object, object]:
        volume_node = next(volume for _, k, volume, _ in self._lists.values() if k == key)
        return volume_node, volume_node.GetScene().GetNodeByID(key[0])

    def _slice_clicks(self, run: _Run) -> list[clicks.PlacedClick]:
        """The clicks of the run's segment that lie on the run's slice."""
        found = []
        for node, key, volume_node, _ in self._lists.values():
            if key == run.key:
                found += [c for c in clicks.placed_clicks(node, volume_node)
                          if clicks.locate_click(volume_node, c.ras, self._slice_axis()) == run.location]
        return found

    def _start(self, run: _Run) -> None:
        volume_node, segmentation_node = self._nodes(run.key)
        sent = self._slice_clicks(run)
        if not sent:  # the clicks were removed while the run waited
            self._restore_bases(run.key, run.location.refined_axis, [run.location.index, *run.restore_slices])
            return
        try:
            self._job = self.logic.refineAsync(
                volume_node, segmentation_node, run.key[1], [c.request() for c in sent],
                lambda labelmap, answer: self._apply(run, labelmap, answer),
                onDone=lambda job: self._done(run, job), **self.settings)
            self._run = run
        except (ValueError, RuntimeError, PermissionError) as error:
            self._failed(run, str(error))

    def _apply(self, run: _Run, labelmap: np.ndarray, answer: dict):
        """Replace the segment's voxels on the refined slices (the scene's only change); slices
        the run had to redo that the worker did not refine get their voxels from before their
        first click."""
        volume_node, segmentation_node = self._nodes(run.key)
        axis, slices = run.location.refined_axis, answer.get("refined_slices") or []
        if answer.get("refined_axis") != axis or run.location.index not in slices:
            raise ValueError(f"the worker refined slices {slices} along IJK axis {answer.get('refined_axis')}, "
                             f"not the clicked slice {run.location.index} along axis {axis}")
        previous = slice_edits.segment_slices(volume_node, segmentation_node, run.key[1], axis, slices)
        for n, s in enumerate(slices):
            self._bases.setdefault((run.key, axis, s), np.take(previous, [n], axis=2 - axis))
        slice_edits.replace_segment_slices(labelmap, 1, axis, slices, volume_node, segmentation_node, run.key[1])
        self._restore_bases(run.key, axis, [s for s in run.restore_slices if s not in slices])
        if run.point is not None and any(point == run.point for _, point in self._order):
            self.steps.append(_Step(run.key, run.point, run.location, slices, previous))
        return segmentation_node

    def _done(self, run: _Run, job) -> None:
        self._run = None
        if job.state == "done":
            self.on_message(f"Click applied: slice {run.location.index} (IJK axis {run.location.refined_axis}).")
        elif job.state == "failed":
            self._failed(run, job.error)

    def _failed(self, run: _Run, error: str) -> None:
        """A run that could not start or failed: its point is removed (the lists show only
        clicks that were applied), and the user is told why."""
        self.on_message(f"The click could not be applied: {error}")
        if run.point is None:
            return
        self._order = [entry for entry in self._order if entry[1] != run.point]
        node = self._lists[run.point[0]][0]
        index = node.GetControlPointIndexByID(run.point[1])
        if index >= 0:
            node.RemoveNthControlPoint(index)
