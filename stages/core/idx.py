"""The IDX file format of MNIST (http://yann.lecun.com/exdb/mnist/): validated reader and writer, gzip or plain."""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from stages.core.errors import PipelineError

# Type codes of the IDX header's third byte.
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
           0x0E: np.dtype(">f8")}
_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}


class IdxError(PipelineError):
    """An IDX file is corrupt or not IDX at all."""


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """Decode IDX bytes into an array, checking the magic number and that the size matches the header."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise IdxError(f"{name}: not an IDX file (bad magic number {data[:4].hex() or 'empty'}); re-download it")
    dtype = np.dtype(_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise IdxError(f"{name}: truncated IDX header ({len(data)} bytes); re-download it")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    # math.prod, not np.prod: a corrupt header's dimensions can overflow int64 and wrap to a plausible size.
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        raise IdxError(f"{name}: {problem}: header says {shape} ({expected} bytes), file has {len(data)} bytes; "
                       "re-download it")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def unpack(raw: bytes, name: str = "IDX data") -> bytes:
    """Gunzip `raw` when it starts with the gzip magic number; plain IDX bytes pass through."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    # Damage inside the deflate stream surfaces as zlib.error, which is not an OSError.
    except (OSError, EOFError, zlib.error) as error:
        raise IdxError(f"{name}: corrupt gzip ({error}); re-download it") from None


def read_idx_bytes(path: str | os.PathLike) -> bytes:
    """The unpacked IDX bytes of a file, gunzipped when it is gzip."""
    return unpack(Path(path).read_bytes(), str(path))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    return parse_idx(read_idx_bytes(path), str(path))


def encode_idx(array: np.ndarray) -> bytes:
    array = np.asarray(array)
    if array.dtype not in _CODES:
        raise ValueError(f"IDX writer supports uint8 and int8 arrays, got {array.dtype}")
    header = bytes([0, 0, _CODES[array.dtype], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an IDX file, gzipped when the name ends in .gz."""
    data = encode_idx(array)
    Path(path).write_bytes(gzip.compress(data, mtime=0) if str(path).endswith(".gz") else data)


def load_images_labels(images_path: str | os.PathLike, labels_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a matching pair of IDX image and label files, validating shapes and label range."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise IdxError(f"{images_path}: expected N x rows x cols images, got shape {images.shape}")
    if labels.ndim != 1:
        raise IdxError(f"{labels_path}: expected a 1-D label vector, got shape {labels.shape}")
    if len(images) != len(labels):
        raise IdxError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        bad = int(labels[(labels < 0) | (labels > 9)][0])
        raise IdxError(f"{labels_path}: label {bad} outside 0-9")
    return images, labels
