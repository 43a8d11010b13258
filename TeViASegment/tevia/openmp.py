"""OpenMP settings for the processes that answer requests (worker, server, predict); torch-free.

GNU OpenMP (torch's on Linux) lets an idle thread spin 300000 rounds before it sleeps. A process
that shares the CPUs with another busy one (Slicer, a second model, a training run) then loses
most of its time to threads spinning at every barrier while the one they wait for is not
running: bench/bench_contention.py measured a second prompt on a 512x512x300 CT at 76-141 s
instead of 1.6-3.1 s next to a 2-thread job, for no loss on an idle machine. Other OpenMP
runtimes (Windows, macOS builds of torch) read other settings and were not measured.
"""

from __future__ import annotations

import os
import sys

__all__ = ["SPINCOUNT", "limit_spinning"]

SPINCOUNT = "2000"


def limit_spinning() -> bool:
    """Set GOMP_SPINCOUNT (unless the user set it) while torch is not loaded yet: libgomp reads
    it when it loads. Returns whether the setting can still take effect."""
    if "torch" in sys.modules:
        return False
    os.environ.setdefault("GOMP_SPINCOUNT", SPINCOUNT)
    return True
