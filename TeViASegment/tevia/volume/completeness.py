"""Refusing volume files whose voxel data are shorter than their header declares.

ITK fills the missing voxels of a cut NIfTI with zeros, silently (a plain ``.nii`` shorter
than its header says, a ``.nii.gz`` whose gzip stream ends early, or a complete gzip stream of a
cut file); for NRRD and MetaImage it fails with a message that gives no sizes (for MetaImage, a
misleading "No such file or directory"). A mask of half a volume is a wrong answer that looks
right, so :func:`check_complete` reads the header itself, counts the bytes of data the file
really holds (decompressing gzip/zlib streams chunk by chunk, keeping nothing), and refuses a
short file with the bytes declared and found. Layouts it cannot size (text encodings, NRRD
line skips, lists of data files) are left to ITK.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tevia.volume.errors import BadInputError, TruncatedVolumeError

__all__ = ["check_complete"]

_CHUNK = 1 << 20
_NIFTI_HEAD_BYTES = 348
_MAX_HEADER_BYTES = 1 << 20
_GZIP = 16 + zlib.MAX_WBITS
_ZLIB_OR_GZIP = 32 + zlib.MAX_WBITS  # MetaImage's CompressedData is zlib; gzip is accepted too


def _sizes(table: dict[int, str]) -> dict[str, int]:
    return {name: size for size, names in table.items() for name in names.split(",")}


_NRRD_TYPE_BYTES = _sizes({
    1: "signed char,int8,int8_t,uchar,unsigned char,uint8,uint8_t",
    2: "short,short int,signed short,signed short int,int16,int16_t,ushort,unsigned short,unsigned short int,"
       "uint16,uint16_t",
    4: "int,signed int,int32,int32_t,uint,unsigned int,uint32,uint32_t,float",
    8: "longlong,long long,long long int,signed long long,signed long long int,int64,int64_t,ulonglong,"
       "unsigned long long,unsigned long long int,uint64,uint64_t,double",
})
_METAIMAGE_TYPE_BYTES = _sizes({
    1: "met_char,met_uchar", 2: "met_short,met_ushort", 4: "met_int,met_uint,met_long,met_ulong,met_float",
    8: "met_long_long,met_ulong_long,met_double",
})


@dataclass(frozen=True)
class _Data:
    """Where a volume's voxel data are, and how many bytes its header declares."""

    file: Path
    label: str         # how messages name it: "ct.nii", "v.raw (the data file of v.nhdr)"
    wbits: int | None  # zlib window bits of its compression; None when stored raw
    start: int | None  # bytes of the file before the data or their compressed stream; None: raw data at the end
    skip: int          # decompressed bytes before the data
    expected: int      # bytes of voxel data


def _stream(path: Path, wbits: int, label: str, start: int = 0) -> tuple[int, bytes, bool]:
    """(decompressed length, its first bytes, whether the stream ends) of a compressed stream.

    Gzip files may hold several members one after the other (as gzip readers, ITK's included,
    accept): they count as one stream.
    """
    decompressor = zlib.decompressobj(wbits)
    length, head = 0, b""

    def take(data: bytes) -> None:
        nonlocal length, head
        length += len(data)
        head += data[:_NIFTI_HEAD_BYTES - len(head)]

    try:
        with open(path, "rb") as handle:
            handle.seek(start)
            data = handle.read(_CHUNK)
            while data:
                if decompressor.eof:  # after a gzip member: another one (cat a.gz b.gz, bgzip), or trailing bytes
                    data += handle.read(_CHUNK) if len(data) < 2 else b""
                    if wbits != _GZIP or not data.startswith(b"\x1f\x8b"):
                        break
                    decompressor = zlib.decompressobj(wbits)
                take(decompressor.decompress(data, _CHUNK))
                data = decompressor.unconsumed_tail or decompressor.unused_data or handle.read(_CHUNK)
            if not decompressor.eof:
                take(decompressor.flush())
    except zlib.error as error:
        raise BadInputError(f"cannot read {label}: the file is corrupt ({error}); copy or export it again") from error
    return length, head, decompressor.eof


def _refuse(label: str, expected: int | None, held: int, compressed: bool, ended: bool) -> None:
    holds = f"{max(held, 0):,} bytes" + (" once decompressed" if compressed else "")
    if expected is None:
        problem = f"its compressed stream ends early, after {holds}"
    else:
        problem = f"its header declares {expected:,} bytes of voxel data but it holds only {holds}"
        problem += "" if ended else " and its compressed stream ends early"
    raise TruncatedVolumeError(f"{label} is truncated: {problem}. The file was cut short (an interrupted copy, "
                               "download or export): copy or export it again")


def _nifti_data(head: bytes) -> tuple[int, int] | None:
    """(offset, bytes) of the voxel data a single-file NIfTI-1 header declares; None if not one.

    (ITK reads no NIfTI-2.)
    """
    for order in "<>":
        if len(head) < 348 or struct.unpack(order + "i", head[:4])[0] != 348 or head[344:348] != b"n+1\0":
            continue
        dims = struct.unpack(order + "8h", head[40:56])
        bitpix = struct.unpack(order + "h", head[72:74])[0]
        vox_offset = struct.unpack(order + "f", head[108:112])[0]
        if not 1 <= dims[0] <= 7 or bitpix <= 0 or not math.isfinite(vox_offset):
            return None
        voxels = math.prod(max(n, 1) for n in dims[1:dims[0] + 1])
        return max(int(vox_offset), 348), (voxels * bitpix + 7) // 8
    return None


def _header(path: Path, separator: str, is_last: Callable[[bytes], bool]) -> tuple[dict[str, str], int] | None:
    """The ``key<separator>value`` fields of a text header (lower-case keys) and its length in bytes.

    The header ends after the first line for which ``is_last`` is true, or at the end of a
    short file; None when neither is found in the first MiB.
    """
    with open(path, "rb") as handle:
        head = handle.read(_MAX_HEADER_BYTES)
    length, fields = 0, {}
    for line in head.splitlines(keepends=True):
        length += len(line)
        text = line.decode("latin-1")
        if not text.startswith("#"):
            key, _, value = text.partition(separator)
            fields[key.strip().lower()] = value.strip()
        if is_last(line):
            return fields, length
    return (fields, length) if len(head) < _MAX_HEADER_BYTES else None


def _voxel_bytes(sizes: str, element: str, table: dict[str, int], channels: str = "1") -> int | None:
    try:
        counts = [int(n) for n in sizes.split()] + [int(channels)]
    except ValueError:
        return None
    size = table.get(" ".join(element.lower().split()))
    return None if size is None or len(counts) < 2 or min(counts) < 0 else math.prod(counts) * size


def _locate(path: Path, label: str, name: str | None, header_bytes: int) -> tuple[Path, str, int] | None:
    """(file, label, start) of the data: after the header (no data file, or LOCAL), or in the data
    file the header names (relative to the header's folder); None for lists and name patterns."""
    if name is None or name.upper() == "LOCAL":
        return path, label, header_bytes
    if not name or name.upper().startswith("LIST") or "%" in name:
        return None
    file = path.parent / name
    return file, f"{file.name} (the data file of {label})", 0


def _nrrd_data(path: Path, label: str) -> _Data | None:
    found = _header(path, ":", lambda line: not line.strip())
    if found is None:
        return None
    fields, header_bytes = found
    wbits = {"raw": None, "gzip": _GZIP, "gz": _GZIP}.get(fields.get("encoding", "").lower(), 0)
    expected = _voxel_bytes(fields.get("sizes", ""), fields.get("type", ""), _NRRD_TYPE_BYTES)
    try:
        line_skip = int(fields.get("line skip", fields.get("lineskip", "0")))
        byte_skip = int(fields.get("byte skip", fields.get("byteskip", "0")))
    except ValueError:
        return None
    if wbits == 0 or expected is None or line_skip or (byte_skip < 0 and wbits is not None):
        return None
    located = _locate(path, label, fields.get("data file", fields.get("datafile")), header_bytes)
    if located is None:
        return None
    file, label, start = located
    if wbits is not None:  # a compressed stream: the byte skip counts decompressed bytes
        return _Data(file, label, wbits, start, byte_skip, expected)
    return _Data(file, label, None, None if byte_skip < 0 else start + byte_skip, 0, expected)


def _metaimage_data(path: Path, label: str) -> _Data | None:
    found = _header(path, "=", lambda line: line.lstrip().lower().startswith(b"elementdatafile"))
    if found is None:
        return None
    fields, header_bytes = found
    expected = _voxel_bytes(fields.get("dimsize", ""), fields.get("elementtype", ""), _METAIMAGE_TYPE_BYTES,
                            fields.get("elementnumberofchannels", "1"))
    compressed = fields.get("compresseddata", "false").lower() == "true"
    try:
        skip = int(fields.get("headersize", "0"))
    except ValueError:
        return None
    located = _locate(path, label, fields.get("elementdatafile", ""), header_bytes)
    text = fields.get("binarydata", "true").lower() == "false"
    if located is None or expected is None or text or (compressed and skip):
        return None
    file, label, start = located
    if compressed:
        return _Data(file, label, _ZLIB_OR_GZIP, start, 0, expected)
    return _Data(file, label, None, None if skip < 0 else start + skip, 0, expected)


def _check(data: _Data) -> None:
    if not data.file.is_file():
        raise FileNotFoundError(f"{data.label} not found: keep the data file next to its header")
    if data.wbits is None:
        held, ended = os.path.getsize(data.file) - (data.start or 0), True
    else:
        length, _, ended = _stream(data.file, data.wbits, data.label, data.start or 0)
        held = length - data.skip
    if held < data.expected or not ended:
        _refuse(data.label, data.expected, held, compressed=data.wbits is not None, ended=ended)


def check_complete(path: str | os.PathLike, name: str | None = None) -> None:
    """Refuse a NIfTI, NRRD or MetaImage file whose voxel data are shorter than its header declares.

    Args:
        path: The volume file: ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd`` (with
            attached or detached, raw or gzip/zlib data); any other ``.gz`` file gets the gzip
            check only; other files are not checked.
        name: How messages name the file (default: its file name; never its folder).

    Raises:
        TruncatedVolumeError: the data, or their compressed stream, end early; the message gives
            the bytes declared and found, and what to do.
        BadInputError: a compressed stream is corrupt.
        FileNotFoundError: the data file a header names is missing.
    """
    path = Path(path)
    label = name or path.name
    lower = path.name.lower()
    if lower.endswith(".gz"):
        length, head, ended = _stream(path, _GZIP, label)
        offset, expected = (_nifti_data(head) if lower.endswith(".nii.gz") else None) or (0, None)
        if not ended or expected is not None and length - offset < expected:
            _refuse(label, expected, length - offset, compressed=True, ended=ended)
        return
    data = None
    if lower.endswith(".nii"):
        with open(path, "rb") as handle:
            nifti = _nifti_data(handle.read(_NIFTI_HEAD_BYTES))
        data = None if nifti is None else _Data(path, label, None, nifti[0], 0, nifti[1])
    elif lower.endswith((".nrrd", ".nhdr")):
        data = _nrrd_data(path, label)
    elif lower.endswith((".mha", ".mhd")):
        data = _metaimage_data(path, label)
    if data is not None:
        _check(data)
