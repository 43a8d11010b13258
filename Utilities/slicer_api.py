"""The Slicer APIs the module calls, and the oldest Slicer release that has each.

    python Utilities/slicer_api.py                      # list the names the code uses
    python Utilities/slicer_api.py --slicer-git DIR     # + the oldest release having each

With --slicer-git (a clone of github.com/Slicer/Slicer, bare or not), each name is looked up
in Slicer's sources at the release tags in TAGS; docs/SLICER.md keeps the result as a table,
and Testing/TeViASegmentLib/test_slicer_versions.py checks that every name the code uses is in it.

Names found, by reading the code (ast) of TeViASegment.py and TeViASegmentLib:
- dotted names rooted at `slicer` (slicer.util.arrayFromVolume, slicer.app.userSettings);
- methods written in VTK/MRML style (`.UpperCamelCase(`) called on objects, not on
  modules the file imports (SimpleITK's image methods count too: the table says so);
- names rooted at PyTorchUtils (the PyTorch extension).
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1] / "TeViASegment"
SOURCES = [MODULE_DIR / "TeViASegment.py", *sorted((MODULE_DIR / "TeViASegmentLib").glob("*.py"))]
TAGS = ["v5.0.0", "v5.2.0", "v5.4.0", "v5.6.0", "v5.8.0", "v5.10.0", "v5.12.0"]
UPPER_CAMEL = re.compile(r"^[A-Z][a-z]+[A-Za-z0-9]*$")


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def _module_aliases(tree: ast.AST) -> set[str]:
    """Names bound to imported modules in a file (import x, import x as y, from p import module)."""
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            aliases.update(alias.asname or alias.name for alias in node.names if alias.name.islower())
    return aliases


def used_names(paths: list[Path] = SOURCES) -> set[str]:
    """Every Slicer (and VTK/MRML-style) API name the given files use."""
    names = set()
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = _module_aliases(tree) - {"slicer", "PyTorchUtils"}
        chains = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and id(node) not in chains:
                dotted = _dotted(node)
                if dotted and dotted.split(".")[0] in ("slicer", "PyTorchUtils") and "." in dotted:
                    names.add(dotted)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and UPPER_CAMEL.match(node.func.attr):
                root = _dotted(node.func.value)
                if root is None or root.split(".")[0] not in modules:
                    names.add(node.func.attr)
    return names


def _present(git_dir: str, tag: str, name: str) -> bool:
    """Whether Slicer's sources at `tag` define `name` (a heuristic grep, reviewed by hand)."""
    last = name.split(".")[-1]
    if name.startswith("slicer.util."):
        pattern, paths = rf"^def {last}\b", ["Base/Python/slicer/util.py"]
    elif name.startswith("slicer.packaging."):
        pattern, paths = rf"^def {last}\b", ["Base/Python/slicer/packaging.py", "Base/Python/slicer/util.py"]
    else:
        pattern, paths = rf"\b{last}\b", ["Base", "Libs", "Modules"]
    run = subprocess.run(["git", f"--git-dir={git_dir}", "grep", "-q", "-E", pattern, tag, "--", *paths],
                         capture_output=True)
    return run.returncode == 0


def oldest_release(git_dir: str, name: str) -> str:
    """The oldest tag in TAGS from which on Slicer has `name`, or "not in Slicer"."""
    oldest = "not in Slicer"
    for tag in reversed(TAGS):
        if not _present(git_dir, tag, name):
            break
        oldest = tag
    return oldest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slicer-git", help="git directory of a Slicer clone (to look up each name)")
    args = parser.parse_args()
    for name in sorted(used_names(), key=str.lower):
        print(f"{name}\t{oldest_release(args.slicer_git, name)}" if args.slicer_git else name)


if __name__ == "__main__":
    main()
