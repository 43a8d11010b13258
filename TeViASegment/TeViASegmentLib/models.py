"""The model catalogue and the user's model cache.

`Resources/Models/catalogue.json` lists the models the module offers:
```
{"models": [{"name", "version", "url", "sha256", "size", "licence", "modality", "target",
             "example_prompts": [...], "bundled": bool, "description"}]}
```
A bundled model ships in `Resources/Models/<name>/` and needs no network. A downloadable model
is downloaded on request from its URL (a .zip of the model folder: model.json +
model.safetensors), checked against its sha256, and unpacked into
`<cache>/<name>-<version>/`; `ModelStore.clear()` removes the whole cache. A model whose terms
keep its weights out of the extension has a `build` command instead of a URL: the user runs
it once and the model lands in the per-user models folder (`tevia.user_models`), as do models
fine-tuned in Slicer; those are found by name (newest version) or by `<name>-<version>`, and
never removed by `clear()`. A local checkpoint folder can be used directly. Nothing is
downloaded without a user action.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ModelEntry", "ModelStore", "load_catalogue", "is_model_folder", "default_cache_dir",
           "CATALOGUE_PATH", "BUNDLED_MODELS_DIR"]

logger = logging.getLogger(__name__)

BUNDLED_MODELS_DIR = Path(__file__).resolve().parents[1] / "Resources" / "Models"
CATALOGUE_PATH = BUNDLED_MODELS_DIR / "catalogue.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelEntry:
    """One catalogue entry."""

    name: str
    version: str
    url: str = ""
    sha256: str = ""
    size: int = 0
    licence: str = ""
    modality: str = ""
    target: str = ""
    example_prompts: tuple[str, ...] = field(default_factory=tuple)
    bundled: bool = False
    description: str = ""
    build: str = ""

    @property
    def folder_name(self) -> str:
        return f"{self.name}-{self.version}"


def load_catalogue(path: str | Path = CATALOGUE_PATH) -> list[ModelEntry]:
    """Read a catalogue file.

    Raises:
        ValueError: when an entry lacks a name or version, or a downloadable entry lacks its
            url or a 64-hex-digit sha256 (names the entry).
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    entries = []
    for raw in data.get("models", []):
        entry = ModelEntry(**{**raw, "example_prompts": tuple(raw.get("example_prompts", []))})
        if not entry.name or not entry.version:
            raise ValueError(f"catalogue entry needs a name and a version, got {raw}")
        if not entry.bundled and not entry.build and (not entry.url or len(entry.sha256) != 64):
            raise ValueError(f"catalogue entry {entry.name!r} needs a url and a sha256 of 64 hex digits, "
                             "or the build command that makes it")
        entries.append(entry)
    return entries


def default_cache_dir() -> Path:
    """The user's model cache: $TEVIA_MODEL_CACHE, else the platform's user cache folder."""
    if os.environ.get("TEVIA_MODEL_CACHE"):
        return Path(os.environ["TEVIA_MODEL_CACHE"])
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif os.uname().sysname == "Darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "TeViA" / "models"


def _user_models():
    """tevia.user_models (standard library only), imported when first needed."""
    import tevia.user_models

    return tevia.user_models


def is_model_folder(path: str | Path) -> bool:
    """Whether a folder holds a model (tevia.user_models.is_model_folder)."""
    return _user_models().is_model_folder(path)


class ModelStore:
    """Where models are found: bundled, downloaded into the cache, or a local folder.

    Args:
        catalogue: the catalogue's entries.
        cache_dir: the download cache (`default_cache_dir()` when None).
        bundled_dir: the folder of bundled models.
        user_dir: the per-user models folder (`tevia.user_models.user_models_dir()` when None).
    """

    def __init__(self, catalogue: list[ModelEntry], cache_dir: str | Path | None = None,
                 bundled_dir: str | Path = BUNDLED_MODELS_DIR, user_dir: str | Path | None = None) -> None:
        self.catalogue = {entry.name: entry for entry in catalogue}
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.bundled_dir = Path(bundled_dir)
        self.user_dir = Path(user_dir) if user_dir else _user_models().user_models_dir()

    def choices(self) -> list[str]:
        """What the model selector offers: the catalogue's names, then every version of every
        model in the per-user models folder as `<name>-<version>` (earlier versions included)."""
        mine = [m.label for m in _user_models().list_user_models(self.user_dir)]
        return [*self.catalogue, *(label for label in mine if label not in self.catalogue)]

    def entry(self, name: str) -> ModelEntry:
        """The catalogue entry of a model name.

        Raises:
            ValueError: unknown name (lists the known ones and this computer's own).
        """
        if name not in self.catalogue:
            raise self._unknown(name)
        return self.catalogue[name]

    def _unknown(self, name: str) -> ValueError:
        """The error for a name that is neither in the catalogue nor a model on this computer."""
        mine = [m.label for m in _user_models().list_user_models(self.user_dir)]
        return ValueError(f"model {name!r} is not in the catalogue; known models: {sorted(self.catalogue)}; "
                          f"models in {self.user_dir}: {mine or 'none'}")

    def folder(self, name: str) -> Path:
        """Where a catalogue model lives (bundled, cache or per-user models folder), present or not."""
        entry = self.entry(name)
        if entry.bundled:
            return self.bundled_dir / name
        if entry.build:
            return _user_models().find_user_model(name, self.user_dir) or self.user_dir / entry.folder_name
        return self.cache_dir / entry.folder_name

    def available(self, name: str) -> bool:
        """Whether a catalogue model can be used now without a download."""
        return is_model_folder(self.folder(name))

    def resolve(self, model: str) -> str:
        """The value to send to the worker for a model choice: a catalogue model's folder, else
        what tevia.model_folders.find_model finds (a folder path, a bundled or a per-user model).

        Args:
            model: a catalogue name, a per-user model's name, or a folder path holding a model.

        Returns:
            The model folder path.

        Raises:
            ValueError: an unknown name, a catalogue model not downloaded yet, or a folder
                without model.json + model.safetensors.
        """
        if model not in self.catalogue:
            from tevia.model_folders import find_model

            try:
                found = find_model(model, self.bundled_dir, self.user_dir)
            except FileNotFoundError as error:
                raise ValueError(str(error)) from None
            if found is None:
                raise self._unknown(model)
            return str(found)
        folder = self.folder(model)
        if not is_model_folder(folder):
            entry = self.entry(model)
            if entry.bundled:
                raise ValueError(f"model {model!r} is missing from this installation: reinstall the extension")
            if entry.build:
                raise ValueError(f"model {model!r} is not built on this computer yet (its licence keeps the "
                                 f"weights out of the extension): build it once with `{entry.build}`")
            raise ValueError(f"model {model!r} is not downloaded yet: download it with the Download button, "
                             "or choose a local model folder")
        return str(folder)

    def purpose(self, model: str) -> str:
        """What a model is for, "<modality>: <target>" (catalogue, else the folder's model.json;
        "unknown" for what neither says)."""
        if model in self.catalogue:
            modality, target = self.catalogue[model].modality, self.catalogue[model].target
        else:
            card = self.model_json(model)
            modality, target = str(card.get("modality", "")), str(card.get("target", ""))
        return f"{modality or 'unknown modality'}: {target or 'unknown target'}"

    def model_json(self, model: str) -> dict:
        """The model.json of a model (a name or folder), {} when it is not on this computer."""
        try:
            return json.loads((Path(self.resolve(model)) / "model.json").read_text(encoding="utf-8"))
        except (ValueError, OSError):
            return {}

    def example_prompts(self, model: str) -> list[str]:
        """Example prompts of a model: from the catalogue, else from its folder's model.json."""
        if model in self.catalogue and self.catalogue[model].example_prompts:
            return list(self.catalogue[model].example_prompts)
        return [str(p) for p in self.model_json(model).get("example_prompts", [])]

    def side_convention(self, model: str) -> str:
        """The sides a model's training text names ("image" unless its model.json says otherwise)."""
        return str(self.model_json(model).get("side_convention", "image"))

    def download(self, name: str, progress: Callable[[int, int], None] | None = None,
                 cancelled: Callable[[], bool] | None = None) -> Path:
        """Download a catalogue model into the cache, check its sha256 and unpack it.

        Args:
            name: catalogue name.
            progress: called with (bytes received, total bytes).
            cancelled: polled between chunks; when it returns True the download stops.

        Returns:
            The model folder.

        Raises:
            ValueError: a bundled model, a checksum mismatch (nothing is kept), or an archive
                without a model.
            InterruptedError: the download was cancelled (nothing is kept).
            OSError: network or disk errors, with the URL.
        """
        entry = self.entry(name)
        if entry.bundled:
            raise ValueError(f"model {name!r} is bundled with the extension and needs no download")
        if entry.build:
            raise ValueError(f"model {name!r} is built, not downloaded: run `{entry.build}`")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{entry.folder_name}-", dir=self.cache_dir))
        try:
            archive = work / "model.zip"
            digest = self._fetch(entry, archive, progress, cancelled)
            if digest != entry.sha256.lower():
                raise ValueError(f"download of model {name!r} from {entry.url} is corrupt: sha256 {digest}, "
                                 f"expected {entry.sha256}. Nothing was kept; try again.")
            unpacked = work / "unpacked"
            with zipfile.ZipFile(archive) as zip_file:
                zip_file.extractall(unpacked)
            found = [p.parent for p in unpacked.rglob("model.json") if is_model_folder(p.parent)]
            if len(found) != 1:
                raise ValueError(f"archive of model {name!r} must hold one model folder, found {len(found)}")
            target = self.cache_dir / entry.folder_name
            if target.exists():
                shutil.rmtree(target)
            os.replace(found[0], target)
            logger.info("Model %s %s downloaded into %s", name, entry.version, target)
            return target
        finally:
            shutil.rmtree(work, ignore_errors=True)

    @staticmethod
    def _fetch(entry: ModelEntry, path: Path, progress, cancelled) -> str:
        sha = hashlib.sha256()
        try:
            with urllib.request.urlopen(entry.url, timeout=60) as response, open(path, "wb") as file:
                total = int(response.headers.get("Content-Length") or entry.size or 0)
                received = 0
                while chunk := response.read(_CHUNK):
                    if cancelled and cancelled():
                        raise InterruptedError(f"download of model {entry.name!r} was cancelled")
                    file.write(chunk)
                    sha.update(chunk)
                    received += len(chunk)
                    if progress:
                        progress(received, total)
        except InterruptedError:
            raise
        except OSError as error:
            raise OSError(f"could not download model {entry.name!r} from {entry.url}: {error}") from error
        return sha.hexdigest()

    def clear(self) -> int:
        """Remove every downloaded model; returns the bytes freed. Bundled models stay."""
        freed = self.cache_size()
        if self.cache_dir.exists():
            shutil.rmtree(self.cache_dir)
        return freed

    def cache_size(self) -> int:
        """Bytes used by downloaded models."""
        if not self.cache_dir.exists():
            return 0
        return sum(p.stat().st_size for p in self.cache_dir.rglob("*") if p.is_file())
