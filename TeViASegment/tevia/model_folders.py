"""Where a model is found: the one resolver behind every front end (standard library only).

``tevia predict|evaluate|serve|domain|train --init``, the worker's ``load`` and the Slicer
module (``TeViASegmentLib.models.ModelStore``, which first looks up its catalogue of
downloadable models) all turn a model's name into its folder here, in this order:

1. A folder path: absolute, holding a separator, starting with ``.`` or ``~``, or an existing
   folder. It must hold model.json and model.safetensors (``FileNotFoundError`` otherwise).
2. A bundled model's name, such as ``default``: a folder under the bundled models folder
   (:func:`bundled_models_dir`).
3. A model in the per-user models folder (:mod:`tevia.user_models`): ``<name>-<version>``
   exactly, else the newest version of a model called ``<name>``.

Anything else is an unknown name (``ValueError`` listing the bundled and the per-user models).
Nothing is downloaded here: a model folder is never fetched from a hub (the encoders a
model.json names may be hub ids, loaded by tevia.model.text and tevia.model.vision), and the
Slicer module downloads a catalogue model only on the user's request, into its cache.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tevia.user_models import MODEL_FILES, find_user_model, is_model_folder, list_user_models, user_models_dir

__all__ = ["DEFAULT_MODEL", "bundled_models_dir", "available_models", "find_model", "resolve_model"]

DEFAULT_MODEL = "default"


def bundled_models_dir() -> Path:
    """``$TEVIA_MODELS_DIR``; else Resources/Models beside the source (the Slicer module, an
    editable install); else ``<prefix>/share/tevia/Models`` (a wheel install)."""
    if os.environ.get("TEVIA_MODELS_DIR"):
        return Path(os.environ["TEVIA_MODELS_DIR"])
    source = Path(__file__).resolve().parents[1] / "Resources" / "Models"
    return source if source.is_dir() else Path(sys.prefix) / "share" / "tevia" / "Models"


def available_models(bundled_dir: str | Path | None = None) -> list[str]:
    """Names of the bundled models (folders of ``bundled_dir``, default :func:`bundled_models_dir`,
    that hold a model)."""
    root = Path(bundled_dir) if bundled_dir is not None else bundled_models_dir()
    return sorted(p.name for p in root.iterdir() if is_model_folder(p)) if root.is_dir() else []


def _is_path(text: str) -> bool:
    """Whether a model argument names a folder rather than a model (step 1 of the module docstring)."""
    return os.path.isabs(text) or any(sep in text for sep in ("/", "\\")) or text.startswith((".", "~")) \
        or Path(text).is_dir()


def find_model(name_or_path: str | Path, bundled_dir: str | Path | None = None,
               user_dir: str | Path | None = None) -> Path | None:
    """The folder of a model (see the module docstring), or None for a name that is no model.

    Args:
        name_or_path: a folder path, a bundled model's name or a per-user model's name.
        bundled_dir: the bundled models folder (default: :func:`bundled_models_dir`).
        user_dir: the per-user models folder (default: ``tevia.user_models.user_models_dir()``).

    Raises:
        FileNotFoundError: a folder path that does not exist or holds no model.
    """
    text = str(name_or_path)
    if _is_path(text):
        folder = Path(text).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder {text} does not exist: a model folder must hold "
                                    f"{' and '.join(MODEL_FILES)}")
        missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} is not a TeViA model folder: it must hold {' and '.join(MODEL_FILES)} "
                                    f"(it has no {' and no '.join(missing)})")
        return folder
    bundled = (Path(bundled_dir) if bundled_dir is not None else bundled_models_dir()) / text
    if is_model_folder(bundled):
        return bundled
    return find_user_model(text, user_dir)


def resolve_model(name_or_path: str | Path, bundled_dir: str | Path | None = None,
                  user_dir: str | Path | None = None) -> Path:
    """:func:`find_model`, with an unknown name a ``ValueError`` that lists the models there are.

    Raises:
        FileNotFoundError: a folder path that does not exist or holds no model.
        ValueError: a name that is neither a bundled nor a per-user model.
    """
    folder = find_model(name_or_path, bundled_dir, user_dir)
    if folder is not None:
        return folder
    mine = [m.label for m in list_user_models(user_dir)]
    raise ValueError(f"unknown model {str(name_or_path)!r}; bundled models: {available_models(bundled_dir) or 'none'}; "
                     f"models in {user_dir or user_models_dir()}: {mine or 'none'}; or give the path of a model "
                     "folder (a catalogue model that is built, not shipped, has its build command in its card "
                     "under docs/models/)")
