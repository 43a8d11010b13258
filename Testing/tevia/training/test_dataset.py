"""tevia.training.data.CSVSegmentationDataset on the committed QaTa samples and on broken copies of them."""
import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TESTDATA, shared_path
from tevia.training.data import CSVSegmentationDataset, load_image, load_mask

SAMPLES = TESTDATA / "qata_samples"


def _csv_rows(root: Path, split: str = "samples") -> list[dict[str, str]]:
    with open(root / f"{split}.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _write_csv(root: Path, rows: list[dict[str, str]], split: str = "samples") -> None:
    with open(root / f"{split}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["Image", "Description"])
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture()
def samples_copy(tmp_path: Path) -> Path:
    root = tmp_path / "samples"
    shutil.copytree(SAMPLES, root)
    return root


def test_samples_load_with_shapes_ranges_and_texts():
    ds = CSVSegmentationDataset(SAMPLES, "samples")
    rows = _csv_rows(SAMPLES)
    assert len(ds) == len(rows) == 20
    assert ds.skipped == []
    assert ds.texts == [r["Description"] for r in rows]
    assert ds.names == [Path(r["Image"][len("mask_"):]).stem for r in rows]
    assert ds.rows == list(range(2, 22))
    for index in (0, 7, 19):
        item = ds[index]
        assert item["image"].shape == (1, 224, 224) and item["image"].dtype == torch.float32
        assert 0.0 <= item["image"].min() < item["image"].max() <= 1.0
        assert item["mask"].shape == (1, 224, 224) and item["mask"].dtype == torch.float32
        assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
        assert item["text"] == rows[index]["Description"]
        raw = np.asarray(Image.open(SAMPLES / "GTs" / rows[index]["Image"]))
        assert int(item["mask"].sum()) == int((raw == 255).sum())
        gray = np.array(Image.open(SAMPLES / "Images" / rows[index]["Image"][5:]))
        assert torch.equal(item["image"][0], torch.from_numpy(gray).float() / 255)


def test_cache_gives_the_same_items_and_collates():
    plain = CSVSegmentationDataset(SAMPLES, "samples", channels=3)
    cached = CSVSegmentationDataset(SAMPLES, "samples", channels=3, cache=True)
    for index in range(len(plain)):
        a, b = plain[index], cached[index]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert a["image"].shape == (3, 224, 224)
        assert torch.equal(a["image"][0], a["image"][2])
    batch = next(iter(torch.utils.data.DataLoader(cached, batch_size=4)))
    assert batch["image"].shape == (4, 3, 224, 224) and batch["mask"].shape == (4, 1, 224, 224)
    assert batch["text"] == cached.texts[:4] and batch["name"] == cached.names[:4]


def test_resize_to_another_size_keeps_masks_binary():
    ds = CSVSegmentationDataset(SAMPLES, "samples", image_size=(96, 128), cache=True)
    item = ds[3]
    assert item["image"].shape == (1, 96, 128) and item["mask"].shape == (1, 96, 128)
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
    full = CSVSegmentationDataset(SAMPLES, "samples")[3]["mask"].mean()
    assert abs(float(item["mask"].mean()) - float(full)) < 0.01


def _break_missing_image(root: Path, row: dict[str, str]) -> None:
    (root / "Images" / row["Image"][5:]).unlink()


def _break_missing_mask(root: Path, row: dict[str, str]) -> None:
    (root / "GTs" / row["Image"]).unlink()


def _break_truncated_png(root: Path, row: dict[str, str]) -> None:
    path = root / "Images" / row["Image"][5:]
    path.write_bytes(path.read_bytes()[:5000])


def _break_garbage_mask(root: Path, row: dict[str, str]) -> None:
    (root / "GTs" / row["Image"]).write_bytes(b"this is not an image" * 10)


def _break_size_mismatch(root: Path, row: dict[str, str]) -> None:
    path = root / "GTs" / row["Image"]
    Image.open(path).resize((200, 180), Image.Resampling.NEAREST).save(path)


BREAKERS = {
    "missing image": (_break_missing_image, "image file not found"),
    "missing mask": (_break_missing_mask, "mask file not found"),
    "truncated png": (_break_truncated_png, "unreadable image file"),
    "corrupt mask": (_break_garbage_mask, "unreadable mask file"),
    "size mismatch": (_break_size_mismatch, "mask size 200x180 differs from image size 224x224"),
}


@pytest.mark.parametrize("kind", sorted(BREAKERS))
def test_bad_row_is_named_or_skipped(samples_copy: Path, kind: str):
    breaker, reason = BREAKERS[kind]
    rows = _csv_rows(samples_copy)
    breaker(samples_copy, rows[4])
    with pytest.raises(ValueError) as info:
        CSVSegmentationDataset(samples_copy, "samples")
    message = str(info.value)
    assert "samples.csv" in message and "row 6:" in message and reason in message
    assert "--skip-bad" in message
    ds = CSVSegmentationDataset(samples_copy, "samples", skip_bad=True)
    assert len(ds) == 19
    assert [n for n, _ in ds.skipped] == [6] and reason in ds.skipped[0][1]
    assert 6 not in ds.rows and rows[4]["Image"][5:-4] not in ds.names


def test_empty_description_and_several_bad_rows(samples_copy: Path):
    rows = _csv_rows(samples_copy)
    rows[0]["Description"] = "   "
    rows[10]["Description"] = ""
    _write_csv(samples_copy, rows)
    _break_missing_mask(samples_copy, rows[15])
    with pytest.raises(ValueError) as info:
        CSVSegmentationDataset(samples_copy, "samples")
    message = str(info.value)
    assert "3 bad row(s)" in message
    assert "row 2: empty description" in message and "row 12: empty description" in message
    assert "row 17: mask file not found" in message
    ds = CSVSegmentationDataset(samples_copy, "samples", skip_bad=True, cache=True)
    assert len(ds) == 17 and [n for n, _ in ds.skipped] == [2, 12, 17]


def test_decode_failure_found_by_cache_or_named_at_getitem(samples_copy: Path, monkeypatch):
    import tevia.training.data.dataset as dataset_module

    rows = _csv_rows(samples_copy)
    broken = samples_copy / "Images" / rows[2]["Image"][5:]
    ds = CSVSegmentationDataset(samples_copy, "samples")
    original = dataset_module.load_image

    def failing(path, *args, **kwargs):
        if Path(path) == broken:
            raise OSError("image file is truncated")
        return original(path, *args, **kwargs)

    monkeypatch.setattr(dataset_module, "load_image", failing)
    with pytest.raises(ValueError, match=r"samples.csv row 4: cannot decode"):
        ds[2]
    with pytest.raises(ValueError, match=r"row 4: cannot decode"):
        CSVSegmentationDataset(samples_copy, "samples", cache=True)
    cached = CSVSegmentationDataset(samples_copy, "samples", cache=True, skip_bad=True)
    assert len(cached) == 19 and cached.skipped[0][0] == 4


def test_rgb_jpeg_tiff_and_01_masks_load(tmp_path: Path):
    reference = CSVSegmentationDataset(SAMPLES, "samples")
    rows = _csv_rows(SAMPLES)[:3]
    root = tmp_path / "formats"
    (root / "Images").mkdir(parents=True)
    (root / "GTs").mkdir()
    out_rows = []
    for row, ext in zip(rows, ("png", "jpg", "tif")):
        gray = Image.open(SAMPLES / "Images" / row["Image"][5:])
        mask = np.asarray(Image.open(SAMPLES / "GTs" / row["Image"]))
        stem = Path(row["Image"][5:]).stem
        gray.convert("RGB").save(root / "Images" / f"{stem}.{ext}")
        mask_image = Image.fromarray((mask // 255).astype(np.uint8)) if ext != "jpg" else Image.fromarray(mask)
        mask_image.save(root / "GTs" / f"mask_{stem}.{ext}")
        out_rows.append({"Image": f"mask_{stem}.{ext}", "Description": row["Description"]})
    _write_csv(root, out_rows, split="mixed")
    ds = CSVSegmentationDataset(root, "mixed")
    assert len(ds) == 3
    for index in range(3):
        item, ref = ds[index], reference[index]
        assert item["image"].shape == (1, 224, 224)
        if index == 1:  # JPEG: lossy image, mask thresholded at 128 despite compression noise
            assert (item["image"] - ref["image"]).abs().mean() < 0.02
            assert (item["mask"] != ref["mask"]).float().mean() < 0.005
        else:  # RGB made from gray converts back exactly; 0/1 masks give the same mask
            assert torch.equal(item["image"], ref["image"])
            assert torch.equal(item["mask"], ref["mask"])
    rgb = CSVSegmentationDataset(root, "mixed", channels=3, cache=True)
    assert rgb[0]["image"].shape == (3, 224, 224)


def test_mask_threshold_rules(tmp_path: Path):
    cases = {
        "zero_one.png": (np.array([[0, 1], [1, 0]], np.uint8), [[False, True], [True, False]]),
        "zero_255_noisy.png": (np.array([[3, 127], [128, 250]], np.uint8), [[False, False], [True, True]]),
        "sixteen_bit.png": (np.array([[0, 65535], [40000, 1000]], np.uint16), [[False, True], [True, False]]),
    }
    for name, (array, expected) in cases.items():
        Image.fromarray(array).save(tmp_path / name)
        assert load_mask(tmp_path / name).tolist() == expected, name


def test_high_depth_and_alpha_images_become_8_bit(tmp_path: Path):
    Image.fromarray(np.array([[0, 1000], [4000, 4000]], np.uint16)).save(tmp_path / "sixteen.png")
    assert load_image(tmp_path / "sixteen.png", channels=1).tolist() == [[0, 64], [255, 255]]
    assert load_image(tmp_path / "sixteen.png", channels=3).shape == (2, 2)  # gray stays 2D, repeated later
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    assert load_image(tmp_path / "rgba.png", channels=3)[0, 0].tolist() == [200, 0, 0]
    assert load_image(tmp_path / "rgba.png", channels=1)[0, 0] == round(200 * 299 / 1000)


def test_text_modes(samples_copy: Path):
    given = CSVSegmentationDataset(SAMPLES, "samples").texts
    empty = CSVSegmentationDataset(SAMPLES, "samples", text_mode="empty")
    assert empty.texts == [""] * 20 and empty[5]["text"] == ""
    shuffled = CSVSegmentationDataset(SAMPLES, "samples", text_mode="shuffled", seed=3)
    again = CSVSegmentationDataset(SAMPLES, "samples", text_mode="shuffled", seed=3)
    other = CSVSegmentationDataset(SAMPLES, "samples", text_mode="shuffled", seed=4)
    assert sorted(shuffled.texts) == sorted(given)
    assert shuffled.texts == again.texts
    assert shuffled.texts != given and other.texts != shuffled.texts
    assert shuffled[2]["text"] == shuffled.texts[2]
    with pytest.raises(ValueError, match="text_mode must be one of"):
        CSVSegmentationDataset(SAMPLES, "samples", text_mode="random")


def test_split_folder_resolution_and_errors(tmp_path: Path):
    root = tmp_path / "data"
    shutil.copytree(SAMPLES / "Images", root / "Val" / "Images")
    shutil.copytree(SAMPLES / "GTs", root / "Val" / "GTs")
    shutil.copy(SAMPLES / "samples.csv", root / "val.csv")
    ds = CSVSegmentationDataset(root, "val")
    assert ds.split_dir == root / "Val" and len(ds) == 20
    shutil.copy(SAMPLES / "samples.csv", root / "test.csv")
    with pytest.raises(FileNotFoundError) as info:
        CSVSegmentationDataset(root, "test")
    assert str(root / "Test") in str(info.value) and str(root / "test") in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"splits found in .*\['test', 'val'\]"):
        CSVSegmentationDataset(root, "train")
    (root / "bad.csv").write_text("Filename,Text\na.png,x\n")
    shutil.copytree(SAMPLES / "Images", root / "bad" / "Images")
    shutil.copytree(SAMPLES / "GTs", root / "bad" / "GTs")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['Description', 'Image'\]"):
        CSVSegmentationDataset(root, "bad")
    with pytest.raises(ValueError, match="channels must be 1 or 3, got 2"):
        CSVSegmentationDataset(root, "val", channels=2)


def test_full_qata_val_csv_validates_from_headers():
    root = shared_path("qata-cov19")
    ds = CSVSegmentationDataset(root, "val")
    assert len(ds) == 1429 and ds.skipped == []
    assert len(set(ds.texts)) > 100
