"""Model catalogue and cache: downloads from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import zipfile
from functools import partial
from pathlib import Path

import pytest

from TeViASegmentLib import models


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on 127.0.0.1; yields (folder, base URL)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _model_zip(path: Path, payload: bytes = b"weights") -> str:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("chest-ct/model.json", json.dumps({"name": "chest-ct"}))
        archive.writestr("chest-ct/model.safetensors", payload * 100_000)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _catalogue(tmp_path: Path, url: str, sha256: str) -> list[models.ModelEntry]:
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps({"models": [
        {"name": "default", "version": "1", "bundled": True},
        {"name": "chest-ct", "version": "2.0", "url": url, "sha256": sha256, "size": 1, "licence": "MIT",
         "modality": "CT", "example_prompts": ["lung nodule"]}]}))
    return models.load_catalogue(path)


def test_shipped_catalogue_loads_and_its_default_is_bundled():
    entries = {e.name: e for e in models.load_catalogue()}
    assert entries["default"].bundled
    card = json.loads((models.BUNDLED_MODELS_DIR / "default" / "model.json").read_text())
    assert entries["default"].version == card["version"], "catalogue.json's version of the bundled model is its own"
    assert models.ModelStore(models.load_catalogue()).available("default"), "the bundled model ships in Resources/Models"


def test_download_checks_sha256_reports_progress_and_unpacks_into_the_cache(served, tmp_path):
    folder, base = served
    sha = _model_zip(folder / "chest-ct.zip")
    store = models.ModelStore(_catalogue(tmp_path, f"{base}/chest-ct.zip", sha), tmp_path / "cache", tmp_path / "bundled")
    assert not store.available("chest-ct")
    with pytest.raises(ValueError, match="is not downloaded yet"):
        store.resolve("chest-ct")
    progress = []
    target = store.download("chest-ct", progress=lambda got, total: progress.append((got, total)))
    assert target == tmp_path / "cache" / "chest-ct-2.0" and models.is_model_folder(target)
    assert progress[-1][0] == progress[-1][1] == (folder / "chest-ct.zip").stat().st_size
    assert store.resolve("chest-ct") == str(target)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["chest-ct-2.0"], "no temporary files left"
    assert store.clear() > 700_000 and not (tmp_path / "cache").exists() and not store.available("chest-ct")


def test_corrupt_download_keeps_nothing(served, tmp_path):
    folder, base = served
    _model_zip(folder / "chest-ct.zip")
    store = models.ModelStore(_catalogue(tmp_path, f"{base}/chest-ct.zip", "0" * 64), tmp_path / "cache")
    with pytest.raises(ValueError, match="is corrupt: sha256"):
        store.download("chest-ct")
    assert list((tmp_path / "cache").iterdir()) == []


def test_cancelled_and_failed_downloads_keep_nothing(served, tmp_path):
    folder, base = served
    sha = _model_zip(folder / "chest-ct.zip")
    store = models.ModelStore(_catalogue(tmp_path, f"{base}/chest-ct.zip", sha), tmp_path / "cache")
    with pytest.raises(InterruptedError, match="cancelled"):
        store.download("chest-ct", cancelled=lambda: True)
    missing = models.ModelStore(_catalogue(tmp_path, f"{base}/missing.zip", sha), tmp_path / "cache")
    with pytest.raises(OSError, match=r"could not download model 'chest-ct' from http://127\.0\.0\.1"):
        missing.download("chest-ct")
    assert list((tmp_path / "cache").iterdir()) == []


def test_local_folders_and_bad_catalogues(tmp_path):
    store = models.ModelStore(models.load_catalogue(), tmp_path / "cache", tmp_path / "bundled")
    folder = tmp_path / "mine"
    folder.mkdir()
    with pytest.raises(ValueError, match="must hold model.json and model.safetensors"):
        store.resolve(str(folder))
    (folder / "model.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x")
    assert store.resolve(str(folder)) == str(folder)
    with pytest.raises(ValueError, match="is missing from this installation"):
        store.resolve("default")
    with pytest.raises(ValueError, match="bundled with the extension"):
        store.download("default")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"models": [{"name": "x", "version": "1", "url": "http://h/x.zip", "sha256": "abc"}]}))
    with pytest.raises(ValueError, match="'x' needs a url and a sha256 of 64 hex digits"):
        models.load_catalogue(bad)
