"""The server refuses (422) an upload whose data are shorter than its header declares.

Before, the first half of a .nii.gz was segmented with 200 (ITK zero-fills what is missing), and
so was an uncompressed NIfTI shorter than its header. The volume is a real CT (the committed
TotalSegmentator sample), written in each format and cut.
"""

from __future__ import annotations

import httpx
import pytest
import SimpleITK as sitk

from server_helpers import auth, module_server, multipart_body, real_volume, segmenter  # noqa: F401


@pytest.fixture(scope="module")
def volume_files(tmp_path_factory) -> dict[str, bytes]:
    """The CT as .nii.gz, .nii, raw .nrrd and gzip .nrrd bytes."""
    folder = tmp_path_factory.mktemp("upload")
    image = sitk.ReadImage(str(real_volume("totalseg-ct.nii.gz")))
    files = {}
    for name, compressed in (("v.nii.gz", True), ("v.nii", False), ("raw.nrrd", False), ("gz.nrrd", True)):
        sitk.WriteImage(image, str(folder / name), useCompression=compressed)
        files[name] = (folder / name).read_bytes()
    return files


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii", "raw.nrrd", "gz.nrrd"])
def test_a_cut_volume_is_refused_with_422(module_server, volume_files, name):
    cut = volume_files[name][: len(volume_files[name]) // 2]
    body, content_type = multipart_body([("volume", cut, name), ("text", b"liver", None)])
    answer = httpx.post(f"{module_server.url}/v1/segment", content=body, timeout=60,
                        headers={**auth(), "Content-Type": content_type})
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert detail.startswith("the uploaded volume is truncated: its header declares") and "holds only" in detail
    assert "/" not in detail.split("truncated")[1]  # no server path
