"""Rewrite the SCRIPTS and RESOURCES lists of TeViASegment/CMakeLists.txt from the files on disk.

Slicer's convention is an explicit list (no glob at configure time); run this after adding or
removing a module file, and review the diff. Testing/TeViASegmentLib/test_packaging.py fails
until the list matches the files.
"""

import re
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1] / "TeViASegment"
SKIP_PARTS = {"__pycache__", ".pytest_cache"}


def module_files() -> list[str]:
    """Every file of the module folder that Slicer must install, relative to it."""
    return sorted(p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*")
                  if p.is_file() and not SKIP_PARTS & set(p.parts) and p.suffix != ".pyc" and p.name != "CMakeLists.txt"
                  and not any(part.endswith(".egg-info") for part in p.parts))


def cmake_name(path: str) -> str:
    return re.sub(r"(^|/)TeViASegment\.(py|ui|png)$", r"\1${MODULE_NAME}.\2", path)


def main() -> None:
    cmake = MODULE_DIR / "CMakeLists.txt"
    text = cmake.read_text()
    files = module_files()
    for variable, chosen in (("MODULE_PYTHON_SCRIPTS", [f for f in files if f.endswith(".py")]),
                             ("MODULE_PYTHON_RESOURCES", [f for f in files if not f.endswith(".py")])):
        body = "".join(f"  {cmake_name(f)}\n" for f in chosen)
        text = re.sub(rf"set\({variable}\n.*?\n  \)", f"set({variable}\n{body}  )", text, flags=re.S)
    cmake.write_text(text)


if __name__ == "__main__":
    main()
