"""The engine's shape: folders by role, a small top level, no import circle, no front-end imports.

Imports are read from the source (every `import` and `from ... import`, including those inside
functions and under TYPE_CHECKING), so a circle hidden behind a lazy import is found too.
"""

import ast
from pathlib import Path

from conftest import REPO

ENGINE = REPO / "TeViASegment" / "tevia"
FRONT_END_PACKAGES = {"slicer", "qt", "ctk", "vtk", "trame", "trame_slicer", "TeViASegmentLib"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def engine_imports() -> dict[str, set[str]]:
    """Each engine module -> the engine modules it imports (a package import counts as its __init__)."""
    modules = {module_name(p): p for p in ENGINE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t not in (name, "tevia")}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, circles = {}, {}, set(), [], []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    circles.append(sorted(group))
    return circles


def test_the_engine_has_no_import_circle():
    assert import_circles(engine_imports()) == []


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_circles(graph) == [["a", "b", "c"]]


def test_the_top_level_holds_little_more_than_the_package_face():
    modules = sorted(p.name for p in ENGINE.glob("*.py"))
    assert len(modules) <= 12, modules
    folders = {p.name for p in ENGINE.iterdir() if (p / "__init__.py").exists()}
    assert {"model", "training", "inference", "volume", "prompts", "serving", "commands"} <= folders


def test_the_engine_never_imports_a_front_end():
    offenders = []
    for path in ENGINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{path.relative_to(ENGINE)}: {n}" for n in names if n.split(".")[0] in FRONT_END_PACKAGES]
    assert offenders == []
