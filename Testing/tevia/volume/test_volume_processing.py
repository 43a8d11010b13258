"""Intensity scaling, post-processing and option validation on real volumes."""
import numpy as np
import pytest
import SimpleITK as sitk

from tevia.inference.pipeline import SegmentOptions
from tevia.volume.errors import BadInputError
from tevia.volume.postprocess import fill_holes, largest_components, postprocess_mask, remove_small
from tevia.volume.preprocess import WINDOWS, IntensityScaler, parse_window
from volume_fixtures import ct_path, volumes_dir  # noqa: F401 (pytest fixtures)


@pytest.fixture
def hu(ct_path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(ct_path)))


def test_window_scaling(hu):
    scaler, warnings = IntensityScaler.from_volume(hu, "lung")
    assert (scaler.low, scaler.high) == (-1350.0, 150.0) and warnings == []
    scaled = scaler(hu[10:12])
    assert scaled.dtype == np.float32 and scaled.shape == (2, *hu.shape[1:])
    np.testing.assert_allclose(scaled, np.clip((hu[10:12] + 1350) / 1500, 0, 1), atol=1e-6)
    assert IntensityScaler.from_volume(hu, (40, 400))[0].low == -160


def test_percentile_scaling(hu):
    scaler, _ = IntensityScaler.from_volume(hu)
    low, high = np.percentile(hu, [0.5, 99.5])
    assert scaler.low == pytest.approx(low, abs=1) and scaler.high == pytest.approx(high, abs=1)
    scaled = scaler(hu)
    assert scaled.min() == 0.0 and scaled.max() == 1.0


def test_min_max_when_asked(hu):
    scaler, _ = IntensityScaler.from_volume(hu[15], percentiles=(0, 100))
    assert (scaler.low, scaler.high) == (hu[15].min(), hu[15].max())


def test_eight_bit_images_divide_by_255(volumes_dir):
    png = sitk.GetArrayFromImage(sitk.ReadImage(str(volumes_dir / "totalseg-ct-slice15.png")))
    scaler, _ = IntensityScaler.from_volume(png)
    np.testing.assert_allclose(scaler(png), png / 255.0, atol=1e-6)


def test_non_finite_voxels_warn_and_are_replaced(hu):
    values = hu.astype(np.float32)
    values[0, 0, :5] = [np.nan, np.inf, -np.inf, np.nan, np.nan]
    scaler, warnings = IntensityScaler.from_volume(values, "soft-tissue")
    assert "5 voxels are NaN or infinite" in warnings[0]
    scaled = scaler(values[:1])
    assert np.isfinite(scaled).all() and scaled[0, 0, 1] == 1.0 and scaled[0, 0, 0] == 0.0


def test_all_nan_is_refused():
    with pytest.raises(BadInputError, match="NaN"):
        IntensityScaler.from_volume(np.full((2, 3, 3), np.nan, dtype=np.float32))


def test_constant_volume_is_flagged():
    scaler, warnings = IntensityScaler.from_volume(np.full((3, 4, 4), 7, dtype=np.int16))
    assert scaler.constant and "constant" in warnings[0]


@pytest.mark.parametrize("bad", ["lungs", "1,2,3", (40, 0), ("a", 1), (np.nan, 10)])
def test_parse_window_rejects(bad):
    with pytest.raises(ValueError, match="window"):
        parse_window(bad)


def test_parse_window_accepts():
    assert parse_window("Bone") == WINDOWS["bone"]
    assert parse_window("40,400") == (40.0, 400.0)
    assert parse_window([50, 350]) == (50.0, 350.0)
    assert parse_window(None) is None


@pytest.fixture
def bone(hu):
    """A real mask with many components: bone (> 300 HU) of the committed CT."""
    return hu > 300


def test_largest_component(bone):
    sizes = np.bincount(sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(bone.astype(np.uint8)))).ravel())[1:]
    assert len(sizes) > 3
    kept = largest_components(bone)
    assert kept.sum() == sizes.max() and not (kept & ~bone).any()


def test_remove_small(bone):
    kept = remove_small(bone, 50)
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(kept.astype(np.uint8))))
    assert np.bincount(labels.ravel())[1:].min() >= 50 and 0 < kept.sum() < bone.sum()
    assert np.array_equal(remove_small(bone, 0), bone)


def test_fill_holes_in_plane(hu):
    body = hu > -300
    filled = fill_holes(body)
    assert (filled >= body).all() and filled.sum() > body.sum()
    ring = np.zeros((1, 9, 9), bool)
    ring[0, 2:7, 2:7] = True
    ring[0, 4, 4] = False
    assert fill_holes(ring)[0, 4, 4]


def test_postprocess_mask_order(bone):
    out = postprocess_mask(bone, largest_component=True, fill=True, min_size=10)
    assert out.sum() <= fill_holes(bone).sum() and out.any()


def test_options_from_dict_validates():
    options = SegmentOptions.from_dict({"slice_axis": "coronal", "window": [40, 400], "min_size": 5})
    assert options.window == (40, 400) and options.slice_axis == "coronal"
    for bad, name in [({"threshold": 1.5}, "threshold"), ({"batch_size": 0}, "batch_size"),
                      ({"slice_axis": "oblique"}, "slice_axis"), ({"window": "lungs"}, "window"),
                      ({"convention": "left"}, "convention"), ({"fill_holes": "yes"}, "fill_holes"),
                      ({"min_size": -1}, "min_size"), ({"colour": 1}, "colour")]:
        with pytest.raises(ValueError, match=name):
            SegmentOptions.from_dict(bad)
