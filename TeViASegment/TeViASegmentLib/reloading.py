"""Reload a package's modules for Slicer's *Reload & Test*.

Slicer's reload re-executes only the module's main file (TeViASegment.py); the helper modules
it imports would stay as they were loaded at start-up. `reload_package` reloads each loaded
submodule with `importlib.reload`, the ones others import first, so that a module that does
`from TeViASegmentLib.worker_client import WorkerClient` binds the reloaded class.
"""

from __future__ import annotations

import ast
import importlib
import logging
import sys
from types import ModuleType

__all__ = ["reload_package"]

logger = logging.getLogger(__name__)


def _package_imports(module: ModuleType, package: str) -> set[str]:
    """The package's modules that `module` imports (read from its source file)."""
    try:
        with open(module.__file__, encoding="utf-8") as source:
            tree = ast.parse(source.read())
    except (OSError, TypeError, SyntaxError):
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.__name__.rsplit(".", node.level)[0] if module.__name__ != package else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in names if name.startswith(package + ".")}


def reload_package(package: str) -> list[str]:
    """Reload every loaded submodule of `package` (dependencies first), then the package.

    Args:
        package: a top-level package name, e.g. "TeViASegmentLib".

    Returns:
        The names of the reloaded modules, in the order they were reloaded.
    """
    loaded = {name: module for name, module in list(sys.modules.items())
              if name.startswith(package + ".") and module is not None}
    order: list[str] = []

    def visit(name: str, seen: tuple[str, ...]) -> None:
        if name in order or name in seen or name not in loaded:
            return
        for dependency in sorted(_package_imports(loaded[name], package)):
            visit(dependency, (*seen, name))
        order.append(name)

    for name in sorted(loaded):
        visit(name, ())
    for name in order:
        importlib.reload(sys.modules[name])
    if sys.modules.get(package) is not None:
        importlib.reload(sys.modules[package])
        order.append(package)
    logger.info("Reloaded %s", ", ".join(order))
    return order
