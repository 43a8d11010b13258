"""Volume files whose data are shorter than their header declares are refused, in every format.

ITK fills the missing voxels of a cut NIfTI with zeros without a word, and fails on a cut
NRRD/MetaImage with messages that give no sizes: tevia.volume.completeness refuses each, with
the bytes declared and found. The volumes are real (committed and shared), written in each
format and cut in a temporary folder.
"""
import gzip
import math
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from tevia.volume.completeness import check_complete
from tevia.volume.errors import BadInputError, TruncatedVolumeError
from tevia.volume.io import read_image
from volume_fixtures import SHARED_DATA, VOLUMES

SOURCES = [VOLUMES / "totalseg-ct.nii.gz", SHARED_DATA / "volumes" / "spleen-ct" / "ct.nii.gz"]
# name written -> (its data file, None when attached; compressed)
FORMATS = {
    "v.nii": (None, False), "v.nii.gz": (None, True), "v.nrrd": (None, False), "vz.nrrd": (None, True),
    "v.nhdr": ("v.raw", False), "vz.nhdr": ("vz.raw.gz", True), "v.mha": (None, False), "vz.mha": (None, True),
    "v.mhd": ("v.raw", False), "vz.mhd": ("vz.zraw", True),
}


@pytest.fixture(params=SOURCES, ids=["totalseg-ct", "shared-spleen-ct"], scope="module")
def source(request) -> sitk.Image:
    if not request.param.exists():
        pytest.skip(f"needs the shared data at {request.param}")
    return sitk.ReadImage(str(request.param))


def _data_bytes(image: sitk.Image) -> int:
    return math.prod(image.GetSize()) * sitk.GetArrayViewFromImage(image).itemsize


def _cut(path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("name", FORMATS)
def test_a_complete_file_reads_and_a_cut_one_is_refused(tmp_path, source, name):
    data_file, compressed = FORMATS[name]
    path = tmp_path / name
    sitk.WriteImage(source, str(path), useCompression=compressed)
    image, _ = read_image(path)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(source))
    _cut(tmp_path / (data_file or name), 0.6)
    with pytest.raises(TruncatedVolumeError) as refused:
        read_image(path)
    message = str(refused.value)
    assert f"declares {_data_bytes(source):,} bytes of voxel data but it holds only" in message
    assert (data_file or name) in message and str(tmp_path) not in message
    assert "copy or export it again" in message
    if compressed:
        assert "compressed stream ends early" in message


@pytest.mark.parametrize("name", ["v.nii", "v.nrrd", "v.mha", "v.nhdr"])
def test_one_missing_byte_is_enough(tmp_path, source, name):
    path = tmp_path / name
    sitk.WriteImage(source, str(path), useCompression=False)
    data = tmp_path / ("v.raw" if name == "v.nhdr" else name)
    data.write_bytes(data.read_bytes()[:-1])
    with pytest.raises(TruncatedVolumeError, match=f"holds only {_data_bytes(source) - 1:,} bytes"):
        read_image(path)


def test_a_complete_gzip_stream_of_a_cut_nifti_is_refused(tmp_path, source):
    """The gzip stream ends properly, but what it holds is short: ITK would zero-fill it."""
    sitk.WriteImage(source, str(tmp_path / "v.nii"))
    cut = (tmp_path / "v.nii").read_bytes()[:-1000]
    (tmp_path / "short.nii.gz").write_bytes(gzip.compress(cut))
    with pytest.raises(TruncatedVolumeError, match=f"holds only {_data_bytes(source) - 1000:,} bytes once "
                                                   "decompressed"):
        read_image(tmp_path / "short.nii.gz")


def test_a_gzip_file_of_several_members_is_whole(tmp_path, source):
    """Concatenated gzip members (cat a.gz b.gz, bgzip) are one stream to gzip readers and to ITK."""
    sitk.WriteImage(source, str(tmp_path / "v.nii"))
    plain = (tmp_path / "v.nii").read_bytes()
    members = [gzip.compress(plain[start:start + 100_000]) for start in range(0, len(plain), 100_000)]
    (tmp_path / "members.nii.gz").write_bytes(b"".join(members))
    image, _ = read_image(tmp_path / "members.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(source))
    (tmp_path / "members.nii.gz").write_bytes(b"".join(members[:-1]))
    with pytest.raises(TruncatedVolumeError, match="holds only"):
        read_image(tmp_path / "members.nii.gz")


@pytest.mark.parametrize("keep", [100, 2000, 200_000])
def test_a_cut_gzip_stream_is_refused_wherever_it_is_cut(tmp_path, keep):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(SOURCES[0].read_bytes()[:keep])
    with pytest.raises(TruncatedVolumeError, match="broken.nii.gz is truncated"):
        read_image(path)


def test_a_damaged_gzip_stream_is_corrupt(tmp_path):
    data = bytearray(SOURCES[0].read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    (tmp_path / "damaged.nii.gz").write_bytes(bytes(data))
    with pytest.raises(BadInputError, match="damaged.nii.gz: the file is corrupt"):
        read_image(tmp_path / "damaged.nii.gz")


def test_a_detached_data_file_that_is_missing_is_named(tmp_path, source):
    sitk.WriteImage(source, str(tmp_path / "v.mhd"))
    (tmp_path / "v.raw").unlink()
    with pytest.raises(FileNotFoundError, match=r"v.raw \(the data file of v.mhd\) not found"):
        check_complete(tmp_path / "v.mhd")


def test_big_endian_nifti_headers_are_sized_too(tmp_path, source):
    sitk.WriteImage(source, str(tmp_path / "v.nii"))
    data = bytearray((tmp_path / "v.nii").read_bytes())
    for fields, offset in (("i", 0), ("8h", 40), ("h", 72), ("f", 108)):  # sizeof_hdr, dim, bitpix, vox_offset
        struct.pack_into(">" + fields, data, offset, *struct.unpack_from("<" + fields, data, offset))
    (tmp_path / "big-endian.nii").write_bytes(bytes(data))
    check_complete(tmp_path / "big-endian.nii")
    (tmp_path / "big-endian.nii").write_bytes(bytes(data[:-2]))
    with pytest.raises(TruncatedVolumeError, match=f"holds only {_data_bytes(source) - 2:,} bytes"):
        check_complete(tmp_path / "big-endian.nii")


def test_a_text_metaimage_is_not_sized_as_binary(tmp_path):
    values = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    header = ("ObjectType = Image\nNDims = 3\nBinaryData = False\nDimSize = 4 3 2\nElementType = MET_FLOAT\n"
              "ElementDataFile = LOCAL\n")
    (tmp_path / "text.mha").write_text(header + " ".join(str(int(v)) for v in values.ravel()) + "\n")
    check_complete(tmp_path / "text.mha")  # 62 characters hold the 96 bytes of floats
    image, _ = read_image(tmp_path / "text.mha")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), values)
