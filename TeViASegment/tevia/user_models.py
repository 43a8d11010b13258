"""The per-user models folder: models made on this computer, found by name by every front end.

Fine-tuning in Slicer and configs such as configs/ct-covid-lung.yaml (`train.install: true`)
write model folders here, one per version: ``<folder>/<name>-<version>/`` holding model.json
and model.safetensors. `tevia predict --model NAME`, `tevia evaluate --model NAME`, the worker
and the Slicer module find them by name (the newest version) or by ``<name>-<version>``
(that version: earlier versions stay usable).

The folder is ``$TEVIA_USER_MODELS`` when set, else the platform's user data folder
(``~/.local/share/TeViA/models`` on Linux, ``~/Library/Application Support/TeViA/models`` on
macOS, ``%APPDATA%\\TeViA\\models`` on Windows). It is not a cache: nothing removes it.

Pure standard library: the Slicer side imports it without torch.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["USER_MODELS_ENV", "MODEL_FILES", "UserModel", "is_model_folder", "find_user_model", "list_user_models",
           "user_models_dir", "version_key"]

USER_MODELS_ENV = "TEVIA_USER_MODELS"
MODEL_FILES = ("model.json", "model.safetensors")
"""What every model folder holds (see tevia.checkpoint)."""


@dataclass(frozen=True)
class UserModel:
    """One model folder of the per-user models folder."""

    name: str
    version: str
    folder: Path
    parent: str = ""

    @property
    def label(self) -> str:
        """``<name>-<version>``: the folder's name, and how to choose this version."""
        return self.folder.name


def is_model_folder(path: str | Path) -> bool:
    """Whether a folder holds a model (every one of :data:`MODEL_FILES`)."""
    return all((Path(path) / name).is_file() for name in MODEL_FILES)


def user_models_dir() -> Path:
    """The per-user models folder (see the module docstring); it may not exist yet."""
    if os.environ.get(USER_MODELS_ENV):
        return Path(os.environ[USER_MODELS_ENV]).expanduser()
    if os.name == "nt":
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "TeViA" / "models"


def version_key(version: str) -> tuple:
    """Sort key of a version string: numbers compare as numbers ("1.10" after "1.9")."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"[.\-+_]", version))


def list_user_models(folder: str | Path | None = None) -> list[UserModel]:
    """The models in the per-user models folder, by name, then oldest version first.

    Folders without model.json and model.safetensors, or with an unreadable model.json, are
    left out.
    """
    root = Path(folder) if folder is not None else user_models_dir()
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if not is_model_folder(path):
            continue
        try:
            info = json.loads((path / "model.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        parent = info.get("parent") or {}
        found.append(UserModel(str(info.get("name") or path.name), str(info.get("version", "")), path,
                               f"{parent.get('name', '')}-{parent.get('version', '')}" if parent else ""))
    return sorted(found, key=lambda m: (m.name, version_key(m.version), m.folder.name))


def find_user_model(name: str, folder: str | Path | None = None) -> Path | None:
    """The folder of a user model: ``<name>-<version>`` exactly, else the newest version of a
    model called `name`; None when there is none."""
    models = list_user_models(folder)
    exact = [m.folder for m in models if m.label == name]
    if exact:
        return exact[0]
    named = [m.folder for m in models if m.name == name]
    return named[-1] if named else None
