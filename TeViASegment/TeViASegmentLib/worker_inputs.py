"""The worker's input for a volume node, exported once and kept while the node stays the same.

A second prompt on a volume node must not copy, write, read and hash its voxels again. So each
volume node's export (`scene.write_worker_input`: voxels .npy + geometry .json) is kept with
the node's *version*, and a new export replaces it only when the version changes. Each export
gets a fresh random `input_key` that the segment request carries: the worker reuses the image
(and the fingerprint that keys its feature cache) it kept under that key without looking at the
files (PROTOCOL.md, `input_key`). The key names one content for good: changed voxels or
geometry give a new export under a new key, never new content under an old key.

A node's version is what the export is made of: the node's class (an RGB image is exported as
its luminance), its image data's modification time and its IJK-to-RAS matrix. VTK's
modification times come from one process-wide counter, so any change made the Slicer way
(`slicer.util.updateVolumeFromArray`, `arrayFromVolumeModified` after editing the array from
`arrayFromVolume`, a filter writing the image, a new image data) gives a new version; so does
any change of spacing, origin or axis directions. The parent transform is not part of the
export (the worker gets the node's own IJK-to-RAS), so moving the volume keeps its export.
Voxels changed in place without `arrayFromVolumeModified` are not seen, by this class as by
Slicer's own views: Slicer's rule is to call it after such a change.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from TeViASegmentLib import scene

__all__ = ["WorkerInputs", "volume_version", "KEPT_EXPORTS"]

logger = logging.getLogger(__name__)

#: Volume nodes whose export is kept (the least recently segmented one goes first).
KEPT_EXPORTS = 2


def volume_version(volume_node) -> tuple:
    """What a volume node's worker input is made of, without reading its voxels (see the module
    docstring): it changes whenever the export would."""
    image = volume_node.GetImageData()
    return (volume_node.GetClassName(), None if image is None else image.GetMTime(),
            tuple(scene.ijk_to_ras(volume_node).ravel()))


@dataclass
class _Export:
    version: tuple
    key: str
    source: dict[str, str]

    def exists(self) -> bool:
        return all(Path(path).is_file() for path in self.source.values())

    def remove(self) -> None:
        for path in self.source.values():
            Path(path).unlink(missing_ok=True)


class WorkerInputs:
    """The kept worker inputs of the last `kept` volume nodes segmented, in a temporary folder
    of their own (removed by `clear` and when this object or the process goes).

    Args:
        kept: how many volume nodes keep their export (each takes the voxels' size on disk).
    """

    def __init__(self, kept: int = KEPT_EXPORTS) -> None:
        if kept < 1:
            raise ValueError(f"kept must be >= 1, got {kept}")
        self.kept = kept
        self._folder: Path | None = None
        self._exports: OrderedDict[str, _Export] = OrderedDict()
        self._finalizer: weakref.finalize | None = None

    def input_for(self, volume_node) -> tuple[dict[str, str], str, bool]:
        """The segment request's `input` and `input_key` for a volume node, exporting it when
        it has no export of its current version.

        Returns:
            (input, input_key, exported): exported is False when the kept export was used.

        Raises:
            ValueError: the node cannot be segmented (see `scene.volume_arrays`).
        """
        node_id = volume_node.GetID()
        version = volume_version(volume_node)
        export = self._exports.get(node_id)
        if export is not None and export.version == version and export.exists():
            self._exports.move_to_end(node_id)
            return dict(export.source), export.key, False
        self._drop(node_id)
        key = uuid.uuid4().hex
        source = scene.write_worker_input(volume_node, self._ensure_folder(), stem=key)
        self._exports[node_id] = _Export(version, key, source)
        while len(self._exports) > self.kept:
            self._drop(next(iter(self._exports)))
        logger.debug("Exported volume %r for the worker (input key %s)", volume_node.GetName(), key)
        return dict(source), key, True

    def clear(self) -> None:
        """Remove every kept export and the folder."""
        self._exports.clear()
        if self._finalizer is not None:
            self._finalizer()
        self._folder = self._finalizer = None

    def _drop(self, node_id: str) -> None:
        export = self._exports.pop(node_id, None)
        if export is not None:
            export.remove()

    def _ensure_folder(self) -> Path:
        if self._folder is None or not self._folder.is_dir():  # first use, or removed by a temp cleaner
            if self._finalizer is not None:
                self._finalizer.detach()
            self._folder = Path(tempfile.mkdtemp(prefix="TeViA-inputs-"))
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._folder), True)
        return self._folder
