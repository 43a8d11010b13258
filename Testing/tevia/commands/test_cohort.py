"""Cohorts of `tevia predict`: status rows, reruns, static parts, and the Ray Data engine (a real Ray).

Ray (2 CPUs) starts once for the module; the cases are small crops of the real TotalSegmentator
example CT, segmented by the bundled default model.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from server_helpers import real_volume
from tevia.commands.cli import main as tevia

CASES = 20
TRUNCATED, MISSING = 6, 13


def _cohort(folder: Path, count: int) -> Path:
    """A CSV of `count` crops of the CT; with 20 cases, case 6 is a truncated file and case 13 is missing."""
    ct = sitk.ReadImage(str(real_volume("totalseg-ct.nii.gz")))
    folder.mkdir()
    rows = ["input,text"]
    for n in range(count):
        name = f"case{n:02d}.nii.gz"
        rows.append(f"{name},liver|right lung")
        if count == CASES and n == MISSING:
            continue
        x, y = 4 * n, 2 * n
        sitk.WriteImage(ct[x: x + 40, y: y + 40, 8:14], str(folder / name), useCompression=True)
        if count == CASES and n == TRUNCATED:
            data = (folder / name).read_bytes()
            (folder / name).write_bytes(data[: len(data) // 2])
    (folder / "cases.csv").write_text("\n".join(rows) + "\n")
    return folder / "cases.csv"


def _status(out: Path, name: str = "tevia-status.csv") -> list[dict[str, str]]:
    with (out / name).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _predict(table: Path, out: Path, *extra: str) -> int:
    return tevia(["predict", "--model", "default", "--csv", str(table), "--out", str(out), "--device", "cpu", *extra])


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="tevia[ray] is part of the dev extra")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_a_ray_cohort_matches_the_local_engine_records_failures_and_reruns_only_skip(ray_cluster, tmp_path):
    import torch

    torch.set_num_threads(1)
    table = _cohort(tmp_path / "cases", CASES)
    assert _predict(table, tmp_path / "local") == 1
    assert _predict(table, tmp_path / "ray", "--engine", "ray", "--workers", "2") == 1
    rows = {Path(row["input"]).name: row for row in _status(tmp_path / "ray")}
    assert len(rows) == CASES
    failed = {name: row["message"] for name, row in rows.items() if row["status"] == "failed"}
    assert failed.keys() == {f"case{TRUNCATED:02d}.nii.gz", f"case{MISSING:02d}.nii.gz"}
    assert "input not found" in failed[f"case{MISSING:02d}.nii.gz"]
    assert "truncated" in failed[f"case{TRUNCATED:02d}.nii.gz"] or "damaged" in failed[f"case{TRUNCATED:02d}.nii.gz"]
    outputs = sorted((tmp_path / "ray").glob("case*.nii.gz"))
    assert len(outputs) == CASES - 2 and all(rows[p.name]["status"] == "done" for p in outputs)
    for output in outputs:
        local = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "local" / output.name)))
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(output))), local), output.name
        assert local.any() or output.name  # the label maps are compared whole, empty or not
    written = {p: p.stat().st_mtime_ns for p in outputs}
    assert _predict(table, tmp_path / "ray", "--engine", "ray", "--workers", "2") == 1  # the 2 failed are still failed
    rerun = _status(tmp_path / "ray")[CASES:]
    assert len(rerun) == CASES and {row["status"] for row in rerun} == {"skipped"}
    assert sum(row["message"].startswith("failed before") for row in rerun) == 2
    assert {p: p.stat().st_mtime_ns for p in outputs} == written


def test_static_parts_cover_the_cohort_once_and_a_whole_rerun_skips_them(tmp_path):
    table = _cohort(tmp_path / "cases", 5)
    out = tmp_path / "out"
    for part in (0, 1):
        assert _predict(table, out, "--num-parts", "2", "--part-id", str(part)) == 0
    parts = [[Path(row["input"]).name for row in _status(out, f"tevia-status-part{p}-of-2.csv")] for p in (0, 1)]
    assert parts == [["case00.nii.gz", "case02.nii.gz", "case04.nii.gz"], ["case01.nii.gz", "case03.nii.gz"]]
    assert len(list(out.glob("case*.nii.gz"))) == 5
    assert _predict(table, out) == 0
    assert [row["status"] for row in _status(out)] == ["skipped"] * 5
    (out / "case03.nii.gz").unlink()  # an output removed since: segmented again
    assert _predict(table, out) == 0
    again = {Path(row["input"]).name: row["status"] for row in _status(out)[5:]}
    assert again == {f"case{n:02d}.nii.gz": "done" if n == 3 else "skipped" for n in range(5)}


@pytest.mark.parametrize("extra, message", [
    (["--num-parts", "2", "--part-id", "2"], "--part-id must be 0..1"),
    (["--workers", "2"], "--workers goes with --engine ray"),
    (["--threads", "2"], "--threads goes with --engine ray"),
    (["--engine", "ray", "--workers", "0"], "--workers must be >= 1"),
])
def test_bad_cohort_options_are_refused_before_any_work(tmp_path, extra, message, capsys):
    table = tmp_path / "cases.csv"
    table.write_text("input\nx.nii.gz\n")
    assert tevia(["predict", "--csv", str(table), "--text", "liver", "--out", str(tmp_path / "out"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
