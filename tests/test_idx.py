"""The IDX reader and writer: round trips, and one clear IdxError for each kind of corrupt file."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from stages.core.idx import IdxError, encode_idx, load_images_labels, parse_idx, read_idx, write_idx


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)


@pytest.fixture
def labels() -> np.ndarray:
    return np.array([0, 3, 9, 1, 7], dtype=np.uint8)


def test_header_matches_the_published_format(labels):
    # Magic 0x00000801 then the count, big-endian, as described on yann.lecun.com/exdb/mnist.
    data = encode_idx(labels)
    assert data[:8] == bytes([0, 0, 8, 1, 0, 0, 0, 5])
    assert data[8:] == labels.tobytes()


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_round_trip(tmp_path, images, labels, suffix):
    write_idx(tmp_path / f"images{suffix}", images)
    write_idx(tmp_path / f"labels{suffix}", labels)
    assert (tmp_path / f"images{suffix}").read_bytes()[:2] == (b"\x1f\x8b" if suffix else b"\x00\x00")
    read_images, read_labels = load_images_labels(tmp_path / f"images{suffix}", tmp_path / f"labels{suffix}")
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)
    assert read_images.dtype == np.uint8 and read_images.shape == (5, 28, 28)


def test_int8_round_trip(tmp_path):
    values = np.array([[-128, 0], [5, 127]], dtype=np.int8)
    write_idx(tmp_path / "signed", values)
    np.testing.assert_array_equal(read_idx(tmp_path / "signed"), values)


def test_writer_rejects_unsupported_dtype():
    with pytest.raises(ValueError, match="uint8 and int8"):
        encode_idx(np.zeros(3, dtype=np.float32))


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda data: b"\x00\x01" + data[2:], "bad magic number"),
        (lambda data: b"<html>" + data, "bad magic number"),
        (lambda data: b"", "bad magic number empty"),
        (lambda data: data[:6], "truncated IDX header"),
        (lambda data: data[:-10], "truncated: header says"),
        (lambda data: data + b"\x00\x00", "has trailing bytes"),
        # A header that claims 2**32-1 images of 2**32-1 x 2**32-1 pixels: its size must not wrap around.
        (lambda data: data[:4] + b"\xff" * 12 + data[16:], "truncated: header says"),
    ],
    ids=["bad-magic", "html-page", "empty", "short-header", "truncated", "trailing-bytes", "huge-dimensions"],
)
def test_corrupt_idx_is_a_clear_error(images, mangle, message):
    with pytest.raises(IdxError, match=message):
        parse_idx(mangle(encode_idx(images)), "train-images")


def test_bad_gzip_is_a_clear_error(tmp_path, images):
    packed = bytearray(gzip.compress(encode_idx(images), mtime=0))
    # Damage the deflate stream itself (zlib.error) and cut the end off (EOFError): both must be IdxError.
    packed[40:80] = b"\xff" * 40
    (tmp_path / "damaged.gz").write_bytes(bytes(packed))
    (tmp_path / "cut.gz").write_bytes(gzip.compress(encode_idx(images))[:-20])
    (tmp_path / "crc.gz").write_bytes(gzip.compress(encode_idx(images))[:-8] + b"\x00" * 8)
    for name in ("damaged.gz", "cut.gz", "crc.gz"):
        with pytest.raises(IdxError, match="corrupt gzip"):
            read_idx(tmp_path / name)


def test_image_and_label_counts_must_match(tmp_path, images, labels):
    write_idx(tmp_path / "images.gz", images)
    write_idx(tmp_path / "labels.gz", labels[:4])
    with pytest.raises(IdxError, match="has 5 images but .* has 4 labels"):
        load_images_labels(tmp_path / "images.gz", tmp_path / "labels.gz")


def test_label_outside_0_to_9_is_rejected(tmp_path, images, labels):
    labels = labels.copy()
    labels[2] = 11
    write_idx(tmp_path / "images.gz", images)
    write_idx(tmp_path / "labels.gz", labels)
    with pytest.raises(IdxError, match="label 11 outside 0-9"):
        load_images_labels(tmp_path / "images.gz", tmp_path / "labels.gz")


def test_swapped_files_are_rejected(tmp_path, images, labels):
    write_idx(tmp_path / "images.gz", images)
    write_idx(tmp_path / "labels.gz", labels)
    with pytest.raises(IdxError, match="expected N x rows x cols images"):
        load_images_labels(tmp_path / "labels.gz", tmp_path / "images.gz")
