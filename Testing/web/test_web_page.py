"""The web page end to end (issue 27): `tevia web` as a real process, driven in headless
chromium; the module's Logic, the real worker and the bundled default model behind it.

One app and one browser page for the module; the tests run in order on that page, as an
annotator would: bad uploads, then the sample CT, Segment, paint, a click, Save.
"""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from PIL import Image

from conftest import shared_path
from web_page import (REPO, download, launch_browser, slice_view, start_app, status, stop_app, wait_status,
                      wait_status_change, web_environment)

playwright_api = pytest.importorskip("playwright.sync_api")

CT = REPO / "Testing" / "data" / "volumes" / "totalseg-ct.nii.gz"
PROMPT = "Unilateral pulmonary infection, one infected area, lower left lung."


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("web")


@pytest.fixture(scope="module")
def predicted(folder):
    """`tevia predict` on the same input and prompt with the same (bundled default) model, run
    while the page starts."""
    out = folder / "predict.nii.gz"
    process = subprocess.Popen([sys.executable, "-m", "tevia.commands.cli", "predict", "--input", str(CT),
                                "--text", PROMPT, "--out", str(out), "--device", "cpu"],
                               env=web_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return process, out


@pytest.fixture(scope="module")
def page(folder, predicted):
    app, url = start_app(folder, "--training-dir", str(folder / "training"), "--device", "cpu")
    with playwright_api.sync_playwright() as playwright:
        browser = launch_browser(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url)
        page.wait_for_selector("#tevia-upload", state="attached", timeout=120_000)
        yield page
        browser.close()
    stop_app(app)
    assert not errors, f"the page raised JavaScript errors: {errors}"


def _upload(page, name: str, data: bytes) -> str:
    before = status(page)
    page.set_input_files("#tevia-upload", {"name": name, "mimeType": "application/octet-stream", "buffer": data})
    return wait_status_change(page, before)


def _labels(path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def _same_geometry(image: sitk.Image, reference: sitk.Image) -> None:
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-5)


def _view_pixels(page) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(slice_view(page).screenshot())).convert("RGB"), dtype=np.int16)


def test_bad_uploads_each_get_their_message_and_the_next_upload_works(page):
    ct = CT.read_bytes()
    cases = [
        ("empty.nrrd", b"", "is empty"),
        ("notes.nrrd", b"these are my notes, not a volume\n" * 20, "not a NRRD"),
        ("cut.nii.gz", ct[: len(ct) // 2], "is truncated"),
        ("huge-header.nrrd", b"NRRD0004\n" + b"# a comment line of a header that never ends\n" * 2000,
         "header has no end"),
    ]
    for name, data, expected in cases:
        message = _upload(page, name, data)
        assert message.startswith("Error:") and expected in message, f"{name}: {message}"
    message = _upload(page, "totalseg-ct.nii.gz", ct)
    assert message.startswith("Opened totalseg-ct (122 x 101 x 30 voxels)"), message


def test_cancel_stops_a_run_and_leaves_the_scene_unchanged(page):
    page.fill("#tevia-prompts", PROMPT)
    page.click("#tevia-segment")
    page.wait_for_selector("#tevia-cancel:enabled", timeout=30_000)  # the worker is starting: a long first run
    page.click("#tevia-cancel")
    message = wait_status(page, "document.querySelector('#tevia-status').textContent.startsWith('Cancelled')",
                          timeout_s=120)
    assert message == "Cancelled; the scene is unchanged.", message
    assert page.evaluate("() => window.trame.state.get('tevia_segments').length") == 0
    assert page.is_disabled("#tevia-save-seg") and page.is_enabled("#tevia-segment")


def test_segment_gives_the_voxels_of_tevia_predict_and_redraws_the_slice_view(page, folder, predicted):
    before = _view_pixels(page)
    page.fill("#tevia-prompts", PROMPT)
    page.click("#tevia-segment")
    page.wait_for_selector("#tevia-cancel:enabled", timeout=30_000)  # Cancel is offered while it runs
    message = wait_status(page)
    assert message.endswith("done") and "1 segment(s) added" in message, message
    page.wait_for_timeout(1500)  # the next rendered frame of the view
    changed = np.abs(_view_pixels(page) - before).sum(axis=2) > 30
    assert changed.sum() > 100, "the axial view did not change after the segment was added"

    seg_path = download(page, "tevia-save-seg", folder / "first.seg.nrrd")
    process, predict_out = predicted
    output = process.communicate(timeout=600)[0].decode(errors="replace")
    assert process.returncode == 0, output
    voxels, seg_image = _labels(seg_path)
    expected, _ = _labels(predict_out)
    _same_geometry(seg_image, sitk.ReadImage(str(CT)))
    assert expected.sum() > 0, "tevia predict found nothing: the comparison would prove nothing"
    np.testing.assert_array_equal(voxels > 0, expected > 0)
    segments = slicerio.read_segmentation(str(seg_path))["segments"]
    assert len(segments) == 1 and segments[0]["name"].startswith("Unilateral pulmonary infection"), segments

    nifti = download(page, "tevia-save-nifti", folder / "first-label.nii.gz")
    labelmap, nifti_image = _labels(nifti)
    _same_geometry(nifti_image, sitk.ReadImage(str(CT)))
    np.testing.assert_array_equal(labelmap > 0, expected > 0)


def test_a_paint_stroke_changes_the_voxel_count(page, folder):
    first, _ = _labels(folder / "first.seg.nrrd")
    page.locator("button:has(i.mdi-brush):visible").last.click()  # the editor's Paint in the tool bar
    page.wait_for_function("() => (window.trame.state.get('SegmentEditorState__active_effect_name') || '')"
                           ".endsWith('SegmentationEffectPaint')", timeout=60_000)
    view = slice_view(page).bounding_box()
    x, y = view["x"] + view["width"] * 0.3, view["y"] + view["height"] * 0.3
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(x + step * view["width"] * 0.03, y + step * view["height"] * 0.01)
        page.wait_for_timeout(50)
    page.mouse.up()
    for attempt in range(20):  # the stroke is applied when the server has handled the mouse release
        page.wait_for_timeout(500)
        painted, _ = _labels(download(page, "tevia-save-seg", folder / "painted.seg.nrrd"))
        if (painted > 0).sum() != (first > 0).sum():
            break
    assert int((painted > 0).sum()) > int((first > 0).sum()), "the paint stroke added no voxel"
    assert ((first > 0) & ~(painted > 0)).sum() == 0, "painting removed voxels"


def test_a_click_changes_only_its_slice(page, folder):
    painted, _ = _labels(folder / "painted.seg.nrrd")
    page.click("#tevia-click-positive")
    wait_status(page, "document.querySelector('#tevia-status').textContent.includes('Click on the image')")
    view = slice_view(page).bounding_box()
    page.mouse.click(view["x"] + view["width"] * 0.62, view["y"] + view["height"] * 0.45)
    message = wait_status(page)
    assert message.startswith("Click applied: slice") and message.endswith("done"), message
    page.click("#tevia-click-stop")
    wait_status(page, "document.querySelector('#tevia-status').textContent.includes('Point placement stopped')")
    clicked, _ = _labels(download(page, "tevia-save-seg", folder / "clicked.seg.nrrd"))
    changed = np.flatnonzero(((clicked > 0) != (painted > 0)).any(axis=(1, 2)))
    slice_index = int(message.split("slice ")[1].split(" ")[0])
    assert changed.tolist() == [slice_index], f"click on slice {slice_index} changed slices {changed.tolist()}"


def test_add_to_training_set_writes_what_the_module_writes(page, folder):
    before = status(page)
    page.click("#tevia-add-training")
    message = wait_status_change(page, before)
    assert message.startswith("Added") and message.endswith("done"), message
    written = sorted(p.name for p in (folder / "training").rglob("*") if p.is_file())
    assert any(name.endswith(".csv") for name in written) and any(name.startswith("mask_") for name in written), \
        written


def _open_zipped_series(page, series, name: str) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(p for p in series.iterdir() if p.is_file()):
            zipped.write(path, f"series/{path.name}")
    message = _upload(page, f"{name}.zip", archive.getvalue())
    assert message.startswith(f"Opened {name}"), message
    page.fill("#tevia-prompts", PROMPT)
    before = status(page)
    page.click("#tevia-segment")
    wait_status_change(page, before)
    message = wait_status(page)
    assert message.endswith("done"), message


def test_a_dicom_series_without_frame_of_reference_gets_a_message_instead_of_a_seg(page):
    _open_zipped_series(page, REPO / "Testing" / "data" / "volumes" / "ct-head-dicom-12", "ct-head")
    before = status(page)
    page.click("#tevia-save-dicom-seg")
    message = wait_status_change(page, before)
    assert message.startswith("Error:") and "no Frame of Reference UID" in message, message


def test_a_zipped_dicom_series_is_saved_as_a_dicom_seg_of_that_series(page, folder):
    import pydicom

    series = shared_path("volumes", "totalseg-example-ct-dicom", "series")
    _open_zipped_series(page, series, "ct-series")
    nrrd, _ = _labels(download(page, "tevia-save-seg", folder / "series.seg.nrrd"))
    seg = pydicom.dcmread(download(page, "tevia-save-dicom-seg", folder / "series.seg.dcm"))
    source = pydicom.dcmread(next(p for p in series.iterdir() if p.is_file()), stop_before_pixels=True)
    assert seg.Modality == "SEG" and len(seg.SegmentSequence) == 1
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert int((nrrd > 0).sum()) > 0, "the prompt found nothing: the comparison would prove nothing"
    assert int(seg.pixel_array.astype(bool).sum()) == int((nrrd > 0).sum())
