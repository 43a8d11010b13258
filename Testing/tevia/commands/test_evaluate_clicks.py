"""`tevia evaluate --clicks N` on the committed samples (issue 17): the bundled default model with its
fine-tuned click injection (conftest.click_model_dir), simulated corrective clicks."""
import json
import logging
from pathlib import Path

import pytest

from conftest import TESTDATA
from tevia.commands.cli import main as cli_main

SAMPLES = TESTDATA / "qata_samples"


def _evaluate(model: Path, out: Path, *extra: str) -> int:
    return cli_main(["evaluate", "--model", str(model), "--data", str(SAMPLES), "--split", "samples", "--out",
                     str(out), "--device", "cpu", "--no-hd95", "--batch-size", "10", *extra])


@pytest.fixture(scope="module")
def with_text(click_model_dir: Path, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("eval") / "given"
    assert _evaluate(click_model_dir, out, "--clicks", "3") == 0
    return json.loads((out / "metrics.json").read_text())


def test_clicks_report_dice_after_each_click_and_noc(with_text):
    clicks = with_text["clicks"]
    n = with_text["n"]
    assert n == 20 and clicks["max_clicks"] == 3
    assert len(clicks["dice_mean"]) == len(clicks["dice_pooled"]) == 4
    # Click 0 is the text-only prediction that the rest of metrics.json measures.
    assert clicks["dice_mean"][0] == pytest.approx(with_text["dice_mean"], abs=1e-3)
    assert clicks["dice_pooled"][0] == pytest.approx(with_text["dice_global"], abs=1e-3)
    assert clicks["dice_mean"][3] > clicks["dice_mean"][0] + 0.02
    assert clicks["dice_pooled"][3] > clicks["dice_pooled"][0]
    for key in ("noc@85", "noc@90"):
        noc = clicks[key]
        assert sum(noc["by_clicks"]) == n and len(noc["by_clicks"]) == 4
        assert noc["failed"] <= noc["by_clicks"][3]
        assert noc["mean"] == pytest.approx(sum(k * c for k, c in enumerate(noc["by_clicks"])) / n, abs=1e-3)
    assert clicks["noc@90"]["mean"] >= clicks["noc@85"]["mean"]
    assert "largest error region" in clicks["protocol"]


def test_clicks_without_text_start_lower_and_catch_up(click_model_dir, with_text, tmp_path):
    """--text-mode empty: the clicks-without-text comparison (what the text adds)."""
    assert _evaluate(click_model_dir, tmp_path, "--clicks", "3", "--text-mode", "empty") == 0
    empty = json.loads((tmp_path / "metrics.json").read_text())
    assert empty["text_mode"] == "empty"
    assert empty["clicks"]["dice_mean"][0] < with_text["clicks"]["dice_mean"][0] - 0.05
    assert empty["clicks"]["dice_mean"][3] > empty["clicks"]["dice_mean"][0] + 0.1


def test_clicks_on_a_model_without_click_inputs_are_refused_before_any_work(tiny_model_dir, tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    assert _evaluate(tiny_model_dir, tmp_path / "out", "--clicks", "3") == 2
    assert "--clicks needs a model with click inputs, and tiny-test" in caplog.text
    assert not (tmp_path / "out").exists()
    assert _evaluate(tiny_model_dir, tmp_path / "out", "--clicks", "0") == 2
    assert "--clicks must be >= 1, got 0" in caplog.text


@pytest.mark.parametrize("row, col", [(0, 0), (223, 223), (0, 111), (112, 223)])
def test_a_click_on_an_edge_pixel_stays_inside_the_model_image(row, col):
    """Pixel centres aligned, row 0 of 224 maps to -0.21 at 128: the click must stay a pixel of
    the model's image (the click bench once stopped on exactly this)."""
    from tevia.commands.evaluate_clicks import to_model_click
    from tevia.model.clicks import Click, validate_clicks

    mapped = to_model_click(Click(row, col, True), (224, 224), (128, 128))
    validate_clicks([mapped], (128, 128))
    assert mapped.positive
    centre = to_model_click(Click(111.5, 111.5, False), (224, 224), (128, 128))
    assert centre.row == pytest.approx(63.5) and centre.col == pytest.approx(63.5) and not centre.positive
