"""Input errors of the volume pipeline, each carrying the worker protocol's error code."""

from __future__ import annotations

__all__ = ["InputError", "UnsupportedFormatError", "BadInputError", "TruncatedVolumeError", "VolumeTooLargeError"]


class InputError(ValueError):
    """A problem with the user's input; ``code`` is the worker protocol's error code."""

    code = "bad_input"


class UnsupportedFormatError(InputError):
    """A file format (extension or content) the pipeline cannot read or write."""

    code = "unsupported_format"


class BadInputError(InputError):
    """Readable input that cannot be segmented (4D, all NaN, empty prompt, ...)."""

    code = "bad_input"


class TruncatedVolumeError(BadInputError):
    """A volume file whose voxel data are shorter than its header declares (a cut copy or download)."""


class VolumeTooLargeError(InputError):
    """A volume whose voxels and outputs cannot fit the memory budget."""

    code = "out_of_memory"
