"""tevia.metrics against hand-computed values."""
import math

import numpy as np
import pytest
import torch

from tevia.metrics import PER_CASE_FIELDS, DiceTotals, SegmentationMetrics, dice_score, hd95, iou_score


def _square(top: int, left: int, size: int = 10, shape: tuple[int, int] = (32, 32)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_two_squares_with_known_overlap():
    a, b = _square(0, 0), _square(5, 0)  # 100 pixels each, 50 shared
    assert dice_score(a, b) == pytest.approx(2 * 50 / 200)
    assert iou_score(a, b) == pytest.approx(50 / 150)
    assert dice_score(a, a) == 1.0 and iou_score(a, a) == 1.0 and hd95(a, a) == 0.0
    assert dice_score(a, _square(20, 20)) == 0.0


def test_hd95_in_pixels_on_hand_computable_shapes():
    one, other = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
    one[0, 0], other[3, 4] = True, True
    assert hd95(one, other) == pytest.approx(5.0)  # a 3-4-5 triangle
    line_a, line_b = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
    line_a[0, :10], line_b[4, :10] = True, True
    assert hd95(line_a, line_b) == pytest.approx(4.0)
    single, pair = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
    single[10, 10] = True
    pair[10, 10] = pair[10, 30] = True
    # pair -> single distances are [0, 20]; their 95th percentile (linear) is 19, not the max 20
    assert hd95(single, pair) == pytest.approx(19.0)
    assert hd95(torch.from_numpy(single), torch.from_numpy(pair).float()) == pytest.approx(19.0)


def test_empty_masks():
    empty, a = np.zeros((16, 16), bool), _square(2, 2, size=4, shape=(16, 16))
    assert dice_score(empty, empty) == 1.0 and iou_score(empty, empty) == 1.0
    assert dice_score(empty, a) == 0.0 and iou_score(a, empty) == 0.0
    assert math.isnan(hd95(empty, a)) and math.isnan(hd95(a, empty)) and math.isnan(hd95(empty, empty))


def test_accumulator_pools_and_averages():
    metrics = SegmentationMetrics()
    empty = np.zeros((32, 32), bool)
    row = metrics.update(_square(0, 0), _square(5, 0), "half")  # dice 0.5, iou 1/3
    assert set(row) == set(PER_CASE_FIELDS) and row["gt_pixels"] == 100 and row["pred_pixels"] == 100
    metrics.update(empty, empty, "both-empty")  # dice 1, iou 1, hd95 undefined
    metrics.update(empty, _square(0, 0, size=20), "missed")  # dice 0, iou 0, hd95 undefined
    metrics.update(_square(0, 0), _square(0, 0), "exact")  # dice 1, iou 1, hd95 0
    result = metrics.compute()
    assert result["n"] == 4
    assert result["dice_mean"] == pytest.approx((0.5 + 1 + 0 + 1) / 4)
    assert result["iou_mean"] == pytest.approx((1 / 3 + 1 + 0 + 1) / 4) and "miou" not in result
    # pooled: intersections 50 + 0 + 0 + 100; |P| 100 + 0 + 0 + 100; |G| 100 + 0 + 400 + 100
    assert result["dice_global"] == pytest.approx(2 * 150 / (200 + 600))
    assert result["iou_global"] == pytest.approx(150 / (150 + 0 + 400 + 100))
    # the pooled IoU is the papers' "mIoU" = D / (2 - D) of the pooled Dice
    assert result["iou_global"] == pytest.approx(result["dice_global"] / (2 - result["dice_global"]))
    assert result["n_hd95"] == 2 and result["n_hd95_undefined"] == 2
    assert result["hd95_mean"] == pytest.approx((hd95(_square(0, 0), _square(5, 0)) + 0.0) / 2)
    assert result["hd95_unit"] == "pixels"
    assert [r["name"] for r in metrics.per_case] == ["half", "both-empty", "missed", "exact"]
    metrics.reset()
    with pytest.raises(ValueError, match="before any update"):
        metrics.compute()


def test_without_hd95_and_bad_shapes():
    metrics = SegmentationMetrics(with_hd95=False)
    metrics.update(_square(0, 0), _square(5, 0), "a")
    result = metrics.compute()
    assert math.isnan(result["hd95_mean"]) and result["n_hd95"] == 0 and result["n_hd95_undefined"] == 0
    with pytest.raises(ValueError, match=r"same shape \(H, W\), got pred \(32, 32\) and gt \(16, 16\)"):
        metrics.update(_square(0, 0), np.zeros((16, 16)), "b")
    with pytest.raises(ValueError, match="2D masks"):
        dice_score(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)))


def test_dice_totals_of_torch_batches_are_the_accumulators_dice():
    """What training's validation logs (pooled and mean Dice of logit batches) is the Dice that
    `tevia evaluate` reports for the same masks, also when processes combine their sums."""
    empty = np.zeros((32, 32), bool)
    pairs = [(_square(0, 0), _square(5, 0)), (empty, empty), (empty, _square(0, 0, size=20)),
             (_square(0, 0), _square(0, 0)), (_square(3, 7, size=12), _square(6, 2))]
    metrics, totals = SegmentationMetrics(with_hd95=False), DiceTotals()
    for index, (pred, gt) in enumerate(pairs):
        metrics.update(pred, gt, str(index))
    logits = torch.where(torch.from_numpy(np.stack([p for p, _ in pairs]))[:, None], 3.0, -3.0)
    masks = torch.from_numpy(np.stack([g for _, g in pairs])).float()[:, None]
    totals.update(logits[:2] > 0, masks[:2])  # (B, 1, H, W) batches, bool predictions, float masks
    totals.update(logits[2:] > 0, masks[2:])
    expected = metrics.compute()
    assert totals.compute() == pytest.approx((expected["dice_global"], expected["dice_mean"]), abs=1e-6)  # float32 per image
    assert totals.compute(lambda sums: sums * 2) == pytest.approx(totals.compute(), abs=1e-12)  # two processes
    assert DiceTotals().compute() == (0.0, 0.0)
    with pytest.raises(ValueError, match=r"got \(2, 1, 32, 32\) and \(2, 32, 32\)"):
        totals.update(logits[:2] > 0, masks[:2, 0])
