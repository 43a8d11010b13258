"""`tevia predict`: one input, a folder cohort, a CSV cohort, warnings and errors on stderr."""
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tevia.commands.cli import main as tevia
from tevia.volume.geometry import same_geometry
from tevia.volume.io import read_image
from volume_fixtures import ct_path, volumes_dir  # noqa: F401 (pytest fixtures)

torch.set_num_threads(1)


def test_single_input_multi_prompt(tiny_model_dir, ct_path, tmp_path, capsys):
    out = tmp_path / "masks" / "ct.nrrd"  # the folder is created
    long_prompt = "lower left lung " * 30
    code = tevia(["predict", "--model", str(tiny_model_dir), "--input", str(ct_path), "--text", "liver",
                  "--text", long_prompt, "--out", str(out), "--device", "cpu", "--threshold", "0.4649",
                  "--window", "soft-tissue"])
    assert code == 0
    labelmap = sitk.ReadImage(str(out))
    assert same_geometry(labelmap, sitk.ReadImage(str(ct_path)))
    sidecar = json.loads((tmp_path / "masks" / "ct.tevia.json").read_text())
    assert sidecar["labels"] == {"1": "liver", "2": long_prompt}
    assert sidecar["options"]["window"] == "soft-tissue"
    counts = np.bincount(sitk.GetArrayViewFromImage(labelmap).ravel(), minlength=3)
    assert sidecar["voxels"] == {"liver": counts[1], long_prompt: counts[2]}
    assert "WARNING: totalseg-ct.nii.gz: the prompt has 90 words" in capsys.readouterr().err


def test_input_dir_cohort(tiny_model_dir, volumes_dir, tmp_path, capsys):
    code = tevia(["predict", "--model", str(tiny_model_dir), "--input-dir", str(volumes_dir), "--text", "liver",
                  "--out", str(tmp_path / "out"), "--format", "seg.nrrd", "--device", "cpu"])
    assert code == 0
    names = sorted(p.name for p in (tmp_path / "out").glob("*.seg.nrrd"))
    # The .jpg and the .png of one slice share a stem: each keeps its whole name, neither replaces the other.
    assert names == ["ct-head-dicom-12.seg.nrrd", "spinalcord-t2.seg.nrrd", "totalseg-ct-slice15.jpg.seg.nrrd",
                     "totalseg-ct-slice15.png.seg.nrrd", "totalseg-ct.seg.nrrd"]
    assert "5/5" in capsys.readouterr().err  # the progress bar


def test_csv_rows_that_would_write_one_file_are_refused_before_any_work(volumes_dir, tmp_path, capsys):
    table = tmp_path / "cases.csv"
    table.write_text(f"input,text,output\n{volumes_dir / 'totalseg-ct.nii.gz'},liver,same.nii.gz\n"
                     f"{volumes_dir / 'spinalcord-t2.nii.gz'},spinal cord,same.nii.gz\n")
    code = tevia(["predict", "--model", "no-such-model", "--csv", str(table), "--out", str(tmp_path / "out"),
                  "--device", "cpu"])
    assert code == 2
    assert "would both be written to" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_csv_cohort_with_a_failing_row(tiny_model_dir, volumes_dir, tmp_path, capsys):
    rows = ["input,text,output", "totalseg-ct.nii.gz,liver|spleen,ct.nii.gz", "spinalcord-t2.nii.gz,,",
            "missing.nii.gz,liver,missing.nii.gz", "totalseg-ct-slice15.png,lower left lung,slice.png"]
    table = tmp_path / "cases.csv"
    table.write_text("\n".join(rows).replace("totalseg", str(volumes_dir / "totalseg"))
                     .replace("spinalcord", str(volumes_dir / "spinalcord")))
    code = tevia(["predict", "--model", str(tiny_model_dir), "--csv", str(table), "--text", "spinal cord",
                  "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 1
    err = capsys.readouterr().err
    assert "missing.nii.gz" in err and "1 of 4 case(s) failed" in err
    ct = json.loads((tmp_path / "out" / "ct.tevia.json").read_text())
    assert ct["labels"] == {"1": "liver", "2": "spleen"}
    assert json.loads((tmp_path / "out" / "spinalcord-t2.tevia.json").read_text())["labels"] == {"1": "spinal cord"}
    png, _ = read_image(tmp_path / "out" / "slice.png")
    assert same_geometry(png, read_image(volumes_dir / "totalseg-ct-slice15.png")[0])


@pytest.mark.parametrize("args,match", [
    (["--input", "x.nii.gz", "--out", "y.nii.gz"], "at least one --text"),
    (["--input", "x.nii.gz", "--out", "y.nii.gz", "--text", "a", "--window", "lungs"], "window"),
    (["--input", "x.nii.gz", "--out", "y.nii.gz", "--text", "a", "--device", "cuda:7"], "cuda"),
])
def test_bad_arguments(args, match, capsys):
    assert tevia(["predict", *args]) == 2
    assert match in capsys.readouterr().err


def test_unknown_model(ct_path, tmp_path, capsys):
    code = tevia(["predict", "--model", "no-such-model", "--input", str(ct_path), "--text", "liver",
                  "--out", str(tmp_path / "m.nii.gz"), "--device", "cpu"])
    assert code == 2 and "cannot load model 'no-such-model'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_sidecars_never_replace_files_tevia_did_not_write(tiny_model_dir, ct_path, tmp_path, capsys):
    """A BIDS sidecar ct.json next to the output ct.nii.gz is kept; a foreign ct.tevia.json stops the case."""
    out = tmp_path / "derivatives"
    out.mkdir()
    (out / "ct.json").write_text('{"Modality": "CT"}')
    (out / "ct.tevia.json").write_text('{"mine": true}')
    run = ["predict", "--model", str(tiny_model_dir), "--input", str(ct_path), "--text", "liver",
           "--out", str(out / "ct.nii.gz"), "--device", "cpu"]
    assert tevia(run) == 1
    assert "ct.tevia.json exists and TeViA did not write it" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["ct.json", "ct.tevia.json"]
    assert (out / "ct.tevia.json").read_text() == '{"mine": true}'
    (out / "ct.tevia.json").unlink()
    assert tevia(run) == 0
    assert (out / "ct.json").read_text() == '{"Modality": "CT"}'
    assert json.loads((out / "ct.tevia.json").read_text())["labels"] == {"1": "liver"}
