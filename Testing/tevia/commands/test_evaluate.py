"""tevia evaluate end to end on the committed samples with a real (tiny, random-weight) model,
plus the gallery and the case selection."""
import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TESTDATA
from tevia.commands.cli import main as cli_main
from tevia.training.data import CSVSegmentationDataset
from tevia.commands.evaluate import PER_CASE_COLUMNS, evaluate_model, select_gallery_cases
from tevia.commands.gallery import GT_COLOR, GalleryCase, overlay, save_gallery
from tevia.metrics import dice_score, iou_score

SAMPLES = TESTDATA / "qata_samples"


@pytest.fixture(scope="module")
def segmenter(tiny_model_dir: Path):
    from tevia.inference.segmenter import Segmenter

    return Segmenter.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def threshold(segmenter) -> float:
    """A threshold inside the random model's probability range, so that masks are not empty."""
    dataset = CSVSegmentationDataset(SAMPLES, "samples", image_size=segmenter.spec.image_size)
    probabilities = segmenter.predict(dataset[0]["image"].numpy(), dataset.texts[0])
    return float(np.quantile(probabilities, 0.7))


def _read_cases(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_cli_writes_metrics_cases_and_gallery_matching_one_by_one_prediction(
    tiny_model_dir: Path, segmenter, threshold: float, tmp_path: Path
):
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(tiny_model_dir), "--data", str(SAMPLES), "--split", "samples",
            "--out", str(out), "--batch-size", "6", "--device", "cpu", "--threshold", repr(threshold),
            "--eval-size", "0", "0"]
    assert cli_main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_size"] == list(segmenter.spec.image_size)
    for key in ("dice_global", "iou_global", "dice_mean", "iou_mean", "hd95_mean", "n", "n_hd95", "seconds", "images_per_second"):
        assert key in metrics
    assert metrics["n"] == 20 and metrics["hd95_unit"] == "pixels" and metrics["threshold"] == threshold
    assert metrics["split"] == "samples" and metrics["text_mode"] == "given" and metrics["model"] == "tiny-test"
    assert metrics["seconds"] > 0 and metrics["images_per_second"] > 0

    dataset = CSVSegmentationDataset(SAMPLES, "samples", image_size=segmenter.spec.image_size)
    cases = _read_cases(out / "per_case.csv")
    assert list(cases[0]) == list(PER_CASE_COLUMNS)
    assert [c["name"] for c in cases] == dataset.names and [c["text"] for c in cases] == dataset.texts
    # each image segmented alone with its own prompt gives the same masks as the batched run
    intersection = pred_total = gt_total = 0
    dices, ious = [], []
    for index, case in enumerate(cases):
        item = dataset[index]
        pred = segmenter.predict(item["image"].numpy(), item["text"])[0] > threshold
        gt = item["mask"][0].numpy() > 0.5
        dices.append(dice_score(pred, gt))
        assert float(case["dice"]) == pytest.approx(dices[-1], abs=1e-6)
        ious.append(iou_score(pred, gt))
        assert float(case["iou"]) == pytest.approx(ious[-1], abs=1e-6)
        assert int(case["pred_pixels"]) == int(pred.sum()) and int(case["gt_pixels"]) == int(gt.sum())
        intersection += int((pred & gt).sum())
        pred_total += int(pred.sum())
        gt_total += int(gt.sum())
    assert pred_total > 0
    assert metrics["dice_global"] == pytest.approx(2 * intersection / (pred_total + gt_total))
    assert metrics["dice_mean"] == pytest.approx(np.mean(dices))
    assert metrics["iou_global"] == pytest.approx(intersection / (pred_total + gt_total - intersection))
    assert metrics["iou_mean"] == pytest.approx(np.mean(ious))
    defined = [float(c["hd95"]) for c in cases if c["hd95"] != ""]
    assert metrics["n_hd95"] == len(defined) > 0
    assert metrics["hd95_mean"] == pytest.approx(np.mean(defined), rel=1e-5)

    with Image.open(out / "gallery.png") as gallery:
        assert gallery.format == "PNG" and gallery.width > 1000 and gallery.height > 400


def test_text_modes_and_limit(tiny_model_dir: Path, segmenter, threshold: float, tmp_path: Path):
    common = ["--model", str(tiny_model_dir), "--data", str(SAMPLES), "--split", "samples", "--device", "cpu",
              "--threshold", repr(threshold), "--no-hd95"]
    assert cli_main(["evaluate", *common, "--out", str(tmp_path / "empty"), "--text-mode", "empty", "--limit", "5"]) == 0
    metrics = json.loads((tmp_path / "empty" / "metrics.json").read_text())
    assert metrics["n"] == 5 and metrics["limit"] == 5 and metrics["text_mode"] == "empty"
    assert metrics["hd95_mean"] is None and metrics["n_hd95"] == 0
    assert [c["text"] for c in _read_cases(tmp_path / "empty" / "per_case.csv")] == [""] * 5
    assert cli_main(["evaluate", *common, "--out", str(tmp_path / "shuffled"), "--text-mode", "shuffled"]) == 0
    shuffled_texts = [c["text"] for c in _read_cases(tmp_path / "shuffled" / "per_case.csv")]
    given = CSVSegmentationDataset(SAMPLES, "samples").texts
    assert sorted(shuffled_texts) == sorted(given) and shuffled_texts != given


def test_bad_inputs_give_clear_errors(tiny_model_dir: Path, tmp_path: Path, caplog):
    caplog.set_level(logging.ERROR)
    base = ["evaluate", "--data", str(SAMPLES), "--out", str(tmp_path / "x"), "--device", "cpu"]
    assert cli_main([*base, "--model", str(tmp_path / "no-such-model"), "--split", "samples"]) == 2
    assert "no-such-model does not exist" in caplog.text
    assert cli_main([*base, "--model", str(tiny_model_dir), "--split", "test"]) == 2
    assert "no CSV for split 'test'" in caplog.text
    assert cli_main([*base, "--model", str(tiny_model_dir), "--split", "samples", "--threshold", "1.5"]) == 2
    assert "threshold must be strictly between 0 and 1, got 1.5" in caplog.text
    assert not (tmp_path / "x").exists()


def test_unreadable_image_during_evaluation_names_the_row(tiny_model_dir: Path, tmp_path: Path, monkeypatch, caplog):
    import tevia.training.data.dataset as dataset_module

    original = dataset_module.load_image
    broken = CSVSegmentationDataset(SAMPLES, "samples").names[6]

    def failing(path, *args, **kwargs):
        if Path(path).stem == broken:
            raise OSError("image file is truncated")
        return original(path, *args, **kwargs)

    monkeypatch.setattr(dataset_module, "load_image", failing)
    caplog.set_level(logging.ERROR)
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(tiny_model_dir), "--data", str(SAMPLES), "--split", "samples",
            "--out", str(out), "--device", "cpu", "--no-hd95"]
    assert cli_main(argv) == 2
    assert "samples.csv row 8: cannot decode" in caplog.text and "--skip-bad" in caplog.text
    assert not out.exists()


def test_evaluate_model_checks_channels(segmenter):
    wrong = CSVSegmentationDataset(SAMPLES, "samples", image_size=(96, 96), channels=3)
    with pytest.raises(ValueError, match="3-channel images but the model takes 1"):
        evaluate_model(segmenter, wrong, batch_size=4, threshold=0.5)


def test_select_gallery_cases_best_then_worst():
    per_case = [{"name": f"c{i}", "dice": d} for i, d in enumerate([0.5, 0.9, 0.1, 0.95, 0.0, 0.7, 0.3, 0.8, 0.6])]
    chosen = select_gallery_cases(per_case)
    assert chosen == [(3, "best"), (1, "best"), (7, "best"), (5, "best"),
                      (4, "worst"), (2, "worst"), (6, "worst"), (0, "worst")]
    few = select_gallery_cases(per_case[:3])
    assert sorted(i for i, _ in few) == [0, 1, 2] and few[0] == (1, "best")


def test_overlay_tints_only_the_mask_and_gallery_writes_png(tmp_path: Path):
    image = np.full((20, 30), 0.5, dtype=np.float32)
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:10, 5:15] = True
    tinted = overlay(image, mask, GT_COLOR, alpha=0.5)
    assert tinted.shape == (20, 30, 3)
    assert np.allclose(tinted[~mask], 0.5)
    assert np.allclose(tinted[mask], 0.5 * 0.5 + 0.5 * np.array(GT_COLOR))
    with pytest.raises(ValueError, match="does not match image shape"):
        overlay(image, mask[:10], GT_COLOR)
    case = GalleryCase(image=image[None], gt=mask, pred=np.zeros_like(mask), name="a", dice=0.0, group="worst")
    path = save_gallery([case, case], tmp_path / "g" / "gallery.png", title="t")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.width > png.height / 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["gallery.png"]
    with pytest.raises(ValueError, match="at least one case"):
        save_gallery([], tmp_path / "none.png")


def test_bundled_default_model_segments_the_samples_from_their_descriptions():
    from tevia.inference.segmenter import Segmenter

    segmenter = Segmenter.load("default", device="cpu")
    spec = segmenter.spec
    dataset = CSVSegmentationDataset(SAMPLES, "samples", image_size=spec.image_size, channels=spec.in_channels)
    metrics, _ = evaluate_model(segmenter, dataset, batch_size=10, threshold=spec.threshold, with_hd95=False)
    # measured on these 20 samples: dice_global 0.825, dice_mean 0.788 (at 224; floors just under)
    assert metrics["dice_global"] >= 0.80 and metrics["dice_mean"] >= 0.75, metrics


def test_masks_are_measured_at_the_data_resolution(tiny_model_dir: Path, threshold: float, tmp_path: Path):
    """By default (224 x 224, QaTa's own size) the model's probabilities are resized back to the
    data's resolution before thresholding: ground-truth pixel counts are those of the 224 masks."""
    out = tmp_path / "eval224"
    argv = ["evaluate", "--model", str(tiny_model_dir), "--data", str(SAMPLES), "--split", "samples",
            "--out", str(out), "--device", "cpu", "--threshold", repr(threshold), "--no-hd95"]
    assert cli_main(argv) == 0
    assert json.loads((out / "metrics.json").read_text())["eval_size"] == [224, 224]
    full = CSVSegmentationDataset(SAMPLES, "samples", image_size=(224, 224))
    gt_pixels = [int(full[i]["mask"].sum()) for i in range(len(full))]
    assert [int(c["gt_pixels"]) for c in _read_cases(out / "per_case.csv")] == gt_pixels
