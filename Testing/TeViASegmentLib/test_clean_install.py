"""The engine in clean virtual environments, holding only what a user's install puts there.

- As in Slicer: one venv with torch + `Resources/requirements.txt` and nothing else (what the
  module's installer installs), `TeViASegment/` on PYTHONPATH (as the worker client sets it),
  the worker protocol end to end through the module's own `WorkerClient` on a real CT and a
  real chest X-ray.
- As a package: the same venv gets `pip install --no-deps .` (a real wheel build, the bundled
  model included); `pip check` proves the package's declared dependencies are all there and
  `tevia predict` runs. test_packaging.py checks that the base dependencies are exactly
  requirements.txt + torch, so this venv is what `pip install .` installs (one venv instead
  of two halves the cost).
- Offline: a bare venv gets torch and the requirements from a wheel folder made with
  `pip download`, with every package index unreachable and pip's configuration ignored.

Cost: the module venv about 1 minute when the machine is idle (torch comes from pip's cache or
a local wheel), the offline test about half a minute. TEVIA_SKIP_CLEAN_INSTALL=1 skips them
in a quick local run; CI runs them.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO, TESTDATA
from test_installer import _write_wheel
from TeViASegmentLib import installer
from TeViASegmentLib.worker_client import WorkerClient
from tevia.metrics import dice_score
from tevia.volume.geometry import ijk_to_ras

pytestmark = pytest.mark.skipif(os.environ.get("TEVIA_SKIP_CLEAN_INSTALL") == "1",
                                reason="TEVIA_SKIP_CLEAN_INSTALL=1")

log = logging.getLogger(__name__)

TRAIN_ONLY = ("lightning", "pandas", "matplotlib", "tensorboard", "fastapi", "uvicorn", "pytest", "slicer")
QATA = TESTDATA / "qata_samples"
# A committed QaTa val sample on which the bundled model scores Dice 0.853 (`make demo`'s
# sample); its description names image sides, hence convention "image".
XRAY_MASK = "mask_sub-s11236_ses-e25185_run-1_bp-chest_vp-pa_dx.png"


def _torch_spec() -> str:
    """The torch release of the test environment (its local wheel or pip's cache serves it)."""
    return "torch==" + importlib.metadata.version("torch").split("+")[0]


def _clean_env() -> dict[str, str]:
    """This process's environment without anything that could reach the test's own packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def _bare_venv(folder: Path) -> Path:
    venv.create(folder, with_pip=True)
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _run(*command: str | Path, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    run = subprocess.run([str(c) for c in command], capture_output=True, text=True, env=kwargs.pop("env", _clean_env()),
                         timeout=timeout, **kwargs)
    assert run.returncode == 0, f"{' '.join(map(str, command))} failed:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    return run


def _importable(python: Path, modules: tuple[str, ...]) -> list[str]:
    code = f"import importlib.util as u; print(' '.join(m for m in {modules!r} if u.find_spec(m)))"
    return _run(python, "-c", code).stdout.split()


def _xray_sample() -> tuple[Path, Path, str]:
    """(image, ground-truth mask, description) of XRAY_MASK's sample."""
    rows = dict(line.split(",", 1) for line in (QATA / "samples.csv").read_text().splitlines()[1:])
    return QATA / "Images" / XRAY_MASK.removeprefix("mask_"), QATA / "GTs" / XRAY_MASK, rows[XRAY_MASK].strip('"')


@pytest.fixture(scope="module")
def slicer_python(tmp_path_factory) -> Path:
    """Python of a venv with torch + the module's Resources/requirements.txt only."""
    start = time.monotonic()
    python = _bare_venv(tmp_path_factory.mktemp("slicer-venv"))
    _run(python, "-m", "pip", "install", "-q", _torch_spec(), "-r", installer.REQUIREMENTS_PATH)
    log.warning("clean venv (torch + requirements.txt) built in %.0f s", time.monotonic() - start)
    return python


def _answer(worker: WorkerClient, request: dict, timeout_s: float = 300) -> dict:
    request_id = worker.send(request)
    while True:
        event = worker.next_event(timeout_s)
        assert event is not None, f"no answer from the worker in {timeout_s} s: {worker.stderr_tail}"
        assert event["event"] != "exit", f"the worker died: {event}"
        if event.get("id") == request_id and event["event"] in ("result", "error", "cancelled"):
            assert event["event"] == "result", f"{event} {worker.stderr_tail}"
            return event


def test_the_slicer_environment_holds_the_engine_and_no_training_or_test_packages(slicer_python):
    assert _importable(slicer_python, TRAIN_ONLY) == []
    assert _importable(slicer_python, ("torch", "monai", "transformers")) == ["torch", "monai", "transformers"]


def test_worker_segments_real_images_with_only_the_installers_requirements(slicer_python, tmp_path, monkeypatch):
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        monkeypatch.delenv(key, raising=False)
    worker = WorkerClient(python=str(slicer_python), env={"PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1"})
    try:
        started = time.monotonic()
        loaded = _answer(worker, {"type": "load", "model": "default", "device": "cpu"})
        assert loaded["name"] and loaded["device"] == "cpu"
        image = sitk.ReadImage(str(TESTDATA / "volumes" / "totalseg-ct.nii.gz"))
        voxels = sitk.GetArrayFromImage(image)
        np.save(tmp_path / "ct.npy", voxels)
        (tmp_path / "ct.json").write_text(json.dumps({"shape_kji": list(voxels.shape),
                                                      "ijk_to_ras": ijk_to_ras(image).tolist()}))
        result = _answer(worker, {"type": "segment", "prompts": ["lower left lung infection"],
                                  "input": {"npy": str(tmp_path / "ct.npy"), "geometry": str(tmp_path / "ct.json")},
                                  "output": str(tmp_path / "ct-mask.npy")})
        labelmap = np.load(tmp_path / "ct-mask.npy")
        assert labelmap.shape == voxels.shape and labelmap.dtype == np.uint8
        assert result["labels"] == {"1": "lower left lung infection"}
        xray, truth, text = _xray_sample()
        _answer(worker, {"type": "segment", "prompts": [text], "input": str(xray), "output": str(tmp_path / "x.npy"),
                         "options": {"convention": "image"}})
        dice = dice_score(np.load(tmp_path / "x.npy")[0], sitk.GetArrayFromImage(sitk.ReadImage(str(truth))))
        log.warning("clean worker: load + two requests in %.1f s, X-ray Dice %.3f", time.monotonic() - started, dice)
        assert dice > 0.75, f"the bundled model should segment its own kind of image (Dice {dice:.3f})"
    finally:
        worker.shutdown()


def test_base_package_install_runs_tevia_predict(slicer_python, tmp_path):
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the repository
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "Testing",
                                                                "bench", "runs", "out"))
    _run(slicer_python, "-m", "pip", "install", "-q", "--no-deps", source, cwd=tmp_path)
    _run(slicer_python, "-m", "pip", "check")
    assert _importable(slicer_python, TRAIN_ONLY) == []
    xray, truth, text = _xray_sample()
    tevia = slicer_python.parent / ("tevia.exe" if os.name == "nt" else "tevia")
    _run(tevia, "predict", "--model", "default", "--device", "cpu", "--convention", "image", "--input", xray,
         "--text", text, "--out", tmp_path / "mask.png", cwd=tmp_path, timeout=300)
    dice = dice_score(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mask.png"))),
                 sitk.GetArrayFromImage(sitk.ReadImage(str(truth))))
    assert dice > 0.75, f"Dice {dice:.3f}"


def test_the_wheel_carries_every_file_of_the_bundled_model_but_its_documentation():
    import tomllib

    data_files = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    listed = {Path(path).name for path in data_files["share/tevia/Models/default"]}
    folder = REPO / "TeViASegment" / "Resources" / "Models" / "default"
    needed = {p.name for p in folder.iterdir() if p.is_file() and p.suffix not in (".md", ".png")} | {"README.md"}
    assert listed == needed, f"pyproject.toml's data-files for the default model: add {needed - listed}"


def _offline_env(monkeypatch) -> None:
    """No pip configuration, no find-links, and an index that answers nothing: only the folder."""
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")


def test_offline_install_takes_torch_and_the_requirements_from_the_wheel_folder_only(tmp_path, monkeypatch):
    started = time.monotonic()
    wheels = tmp_path / "wheels"
    _run(sys.executable, "-m", "pip", "download", "-q", "-d", wheels, _torch_spec(), env=dict(os.environ))
    _write_wheel(wheels)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("tevia-offline-probe>=0.1,<1\n")
    python = _bare_venv(tmp_path / "venv")
    _offline_env(monkeypatch)
    missing_torch = tmp_path / "no-torch"
    _write_wheel(missing_torch)
    failed = installer.BackgroundInstall(installer.install_steps(missing_torch, str(python), requirements))
    assert failed.wait(300) not in (0, -1) and any("torch" in line for line in failed.output)
    install = installer.BackgroundInstall(installer.install_steps(wheels, str(python), requirements))
    assert install.wait(600) == 0, "\n".join(install.output)
    assert not any("127.0.0.1:9" in line or "Looking in indexes" in line for line in install.output)
    _run(python, "-c", "import torch, tevia_offline_probe; assert tevia_offline_probe.VALUE == 42")
    log.warning("offline install of torch from a wheel folder: %.0f s", time.monotonic() - started)
