"""Fixtures of the volume pipeline tests: the real volumes (committed and shared).

A plain module, not a conftest.py: a second conftest would shadow Testing/conftest.py, which
other suites import as `conftest`. Test modules import the fixtures they use from here.
"""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTDATA = REPO / "Testing" / "data"
SHARED_DATA = Path(os.environ.get("TEVIA_SHARED_DATA", REPO.parent / "shared" / "data"))

VOLUMES = TESTDATA / "volumes"
COMMITTED_INPUTS = [
    VOLUMES / "totalseg-ct.nii.gz",
    VOLUMES / "spinalcord-t2.nii.gz",
    VOLUMES / "ct-head-dicom-12",
    VOLUMES / "totalseg-ct-slice15.png",
    VOLUMES / "totalseg-ct-slice15.jpg",
]
SHARED_INPUTS = [
    "totalseg-example-ct/ct.nii.gz",
    "totalseg-example-ct/ct_112slices.nii.gz",
    "totalseg-example-ct/seg_total.nii.gz",
    "totalseg-example-ct-dicom/series",
    "totalseg-example-ct-dicom/seg_total.nii.gz",
    "spleen-ct/ct.nii.gz",
    "spleen-ct/spleen_manual.nii.gz",
    "spinalcord-t2-mri/t2.nii.gz",
    "spinalcord-t2-mri/spinalcord_manual.nii.gz",
    "ct-head-dicom",
]


def _ids(paths):
    return [Path(p).name if Path(p).name not in ("series", "ct.nii.gz") else str(p).replace("/", "_")[-40:]
            for p in paths]


@pytest.fixture(params=COMMITTED_INPUTS, ids=_ids(COMMITTED_INPUTS))
def committed_input(request) -> Path:
    """Each small committed input (runs without the shared data)."""
    return request.param


@pytest.fixture(params=SHARED_INPUTS, ids=SHARED_INPUTS)
def shared_input(request) -> Path:
    """Each volume of ../shared/data/volumes (skipped when absent)."""
    path = SHARED_DATA / "volumes" / request.param
    if not path.exists():
        pytest.skip(f"needs the shared data at {path}")
    return path


@pytest.fixture(scope="session")
def ct_path() -> Path:
    return VOLUMES / "totalseg-ct.nii.gz"


@pytest.fixture(scope="session")
def volumes_dir() -> Path:
    """Testing/data/volumes (the committed small volumes)."""
    return VOLUMES
