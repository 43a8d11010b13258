"""The 3D Slicer versions the module supports, and the check it runs when it loads.

TeViA supports Slicer 5.10 and later: the engine needs Python 3.10 or later, and Slicer 5.8
runs Python 3.9 (5.10 and 5.12 run Python 3.12). Every Slicer API the module calls exists in
5.10 (docs/SLICER.md lists them with the version that introduced each). This file stays
valid Python 3.9 and imports nothing else of the package, so an older Slicer shows the
message instead of an error.
"""

from __future__ import annotations

import sys

__all__ = ["MINIMUM_SLICER", "MINIMUM_PYTHON", "running_slicer_version", "unsupported_reason"]

MINIMUM_SLICER = (5, 10)
MINIMUM_PYTHON = (3, 10)


def running_slicer_version() -> tuple[int, int] | None:
    """(major, minor) of the running Slicer application, None outside Slicer."""
    import slicer

    app = getattr(slicer, "app", None)
    if app is None:
        return None
    return int(app.majorVersion), int(app.minorVersion)


def unsupported_reason(slicer_version: tuple[int, int] | None = None,
                       python_version: tuple[int, int] | None = None) -> str | None:
    """Why this Slicer cannot run TeViA, or None when it can.

    Args:
        slicer_version: (major, minor); the running Slicer's when None (outside Slicer only
            the Python version is checked).
        python_version: (major, minor); this interpreter's when None.
    """
    slicer_version = slicer_version or running_slicer_version()
    python_version = python_version or tuple(sys.version_info[:2])
    too_old = [f"3D Slicer {'.'.join(map(str, slicer_version))}"] if slicer_version and slicer_version < MINIMUM_SLICER else []
    if python_version < MINIMUM_PYTHON:
        too_old.append(f"Python {'.'.join(map(str, python_version))}")
    if not too_old:
        return None
    return (f"TeViA needs 3D Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or later (its PyTorch engine needs "
            f"Python {MINIMUM_PYTHON[0]}.{MINIMUM_PYTHON[1]} or later); this is {' with '.join(too_old)}. "
            "Install a current Slicer from https://download.slicer.org and TeViA from its Extensions Manager.")
