"""The one registry of the datasets: names, class names, image shape and framing, the four canonical IDX files,
official mirrors and checksums, and the shipped sample.

Every dataset here ships as the same four gzipped IDX files. A downloaded file counts as verified when the md5 or
sha256 of its `.gz` bytes, or the sha256 of its unpacked IDX bytes, is one of the published values below; the
content checksum is what lets a re-gzipped copy (Debian's Fashion-MNIST) count as official.

`mnist_10k` is a sample of MNIST shipped inside this package (stages/mnist_10k/, provenance and licences in its
README): the fallback when no MNIST mirror can be reached. Its held-out files come from MNIST's training set.

Tests only: STAGES_TEST_REGISTRY=<file.json> replaces the mirrors and checksums of the entries it names, e.g.
`{"mnist": {"mirrors": ["http://127.0.0.1:8000/"], "known_digests": {"train-images-idx3-ubyte.gz": ["<sha256>"]}}}`,
so an end-to-end test can play "offline" or "a mirror serving these files" without editing this file (a DVC dep).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

CLASS_NAMES: dict[str, list[str]] = {
    "mnist": [str(digit) for digit in range(10)],
    "fashion_mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ],
}

# Every dataset here: 28x28 grey images of 10 classes, which is what the models take and give.
IMAGE_SIZE = 28
INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)
NUM_CLASSES = 10
# How each dataset framed its items in the 28x28 canvas: (box the item is scaled to fit, how it is centred). An
# image of the user's is framed the same way before the model sees it (stages/reading/framing.py).
FRAMING: dict[str, tuple[int, str]] = {"mnist": (20, "mass"), "fashion_mnist": (IMAGE_SIZE, "box")}

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
# The canonical order: manifests list files in it and the dataset's content hash is taken over it.
FILE_NAMES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
IMAGE_FILES = (TRAIN_IMAGES, TEST_IMAGES)


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's four files come from and the digests that make a copy of each one official."""

    name: str
    mirrors: tuple[str, ...]
    # file name -> every published digest of it: md5 or sha256 of the .gz, or sha256 of the unpacked IDX bytes.
    known_digests: dict[str, frozenset[str]] = field(default_factory=dict)
    folder: Path | None = None  # a copy shipped with the project, read instead of any mirror
    sample_of: str | None = None  # the full dataset this is a sample of (same classes, fewer images)
    test_split: str = "test"  # what its t10k files are: a sample's come from the full set's training images
    debian_copy: tuple[str, str] | None = None  # (folder, package) of a copy Debian packages, for offline use

    @property
    def class_names(self) -> list[str]:
        return CLASS_NAMES[self.sample_of or self.name]

    @property
    def framing(self) -> tuple[int, str]:
        return FRAMING[self.sample_of or self.name]


def _digests(*values: str) -> frozenset[str]:
    return frozenset(value.lower() for value in values)


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        # yann.lecun.com, the original home, now answers 403/404, so it is not tried; these two serve the same files
        # (the first is torchvision's).
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        # torchvision's md5 and TensorFlow Datasets' sha256 of the .gz files.
        known_digests={
            TRAIN_IMAGES: _digests(
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            ),
            TRAIN_LABELS: _digests(
                "d53e105ee54ea40749a09fcbcd1e9432",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            ),
            TEST_IMAGES: _digests(
                "9fb629c4189551a2d022fa330f9573f3",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            ),
            TEST_LABELS: _digests(
                "ec29112dd5afa0611ce80d1b7f02629c",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            ),
        },
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        # Zalando's own bucket, then the copy Keras' fashion_mnist.load_data() reads.
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        ),
        # TensorFlow Datasets' sha256 of the .gz files, then the sha256 of the official files' unpacked IDX bytes,
        # which Debian's re-gzipped package also matches.
        known_digests={
            TRAIN_IMAGES: _digests(
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            ),
            TRAIN_LABELS: _digests(
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            ),
            TEST_IMAGES: _digests(
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            ),
            TEST_LABELS: _digests(
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        },
        debian_copy=("/usr/share/datasets/fashion-mnist", "dataset-fashion-mnist"),
    ),
    "mnist_10k": DatasetSpec(
        name="mnist_10k",
        mirrors=(),
        # The sha256 of each .gz and of its unpacked IDX bytes (stages/mnist_10k/README.md).
        known_digests={
            TRAIN_IMAGES: _digests(
                "fc21abea1944badf7089ab0f58d365825697274618f7723d3d860bf833e86f0d",
                "4277f514adc5512cc75af74303184c9ede647c90be69e83d947058265111c28e",
            ),
            TRAIN_LABELS: _digests(
                "cf47ea6a71e70faa8ebd714008ee2093a45c743ee1751777909f7c1f76c31df9",
                "43fc858174dbf1707bcfdd22a30770de1ca9d8d55fde2297602c6021e0f55161",
            ),
            TEST_IMAGES: _digests(
                "920629920348e69142ca8f17798e63dcf14dff5104efb27a9ab7ccd5b098c1a9",
                "d9712b78a6fc6e8703efa7108f6692067f2c8ca28237ca127a8ab2208387bf90",
            ),
            TEST_LABELS: _digests(
                "398e33902f985b6a3b67e4a63a40db1d4d39da42f06fd1aa1f18a17516fb96c2",
                "064e1d981dfdee57052d7869b9c2abfe73481254911be6808e621e2b74ce1262",
            ),
        },
        folder=Path(__file__).parents[1] / "mnist_10k",
        sample_of="mnist",
        test_split="held-out",
    ),
}


# What params.yaml's data.dataset may name: the full datasets (a sample is chosen by data.source, not by name).
SELECTABLE = tuple(name for name, spec in DATASETS.items() if spec.sample_of is None)


def class_names(dataset: str) -> list[str]:
    return dataset_spec(dataset).class_names


def local_copy_advice(dataset: str) -> str:
    """How to train on a copy of `dataset`'s four IDX files: the one wording of every message that gives it."""
    spec = dataset_spec(dataset)
    folder, package = spec.debian_copy or ("/path/to/folder", None)
    debian = f" (Debian packages one: `apt-get install {package}`)" if package else ""
    return (f"point data.source at a folder, a file:// URL or an http(s):// base URL holding its four IDX files "
            f"({', '.join(FILE_NAMES)}){debian}: `dvc exp run -S data.source={folder}`, or set `data.source:` in "
            "params.yaml")


def sample_of(dataset: str) -> DatasetSpec | None:
    """The shipped sample standing in for `dataset` when its mirrors are out of reach, if there is one."""
    return next((dataset_spec(name) for name, spec in DATASETS.items() if spec.sample_of == dataset), None)


TEST_REGISTRY_ENV = "STAGES_TEST_REGISTRY"


def dataset_spec(dataset: str) -> DatasetSpec:
    """The registry entry of `dataset`; a KeyError names the supported ones (params validation rules out others)."""
    try:
        spec = DATASETS[dataset]
    except KeyError:
        raise KeyError(f"unknown dataset {dataset!r}; supported: {', '.join(DATASETS)}") from None
    override_file = os.environ.get(TEST_REGISTRY_ENV)
    if override_file:
        override = json.loads(Path(override_file).read_text()).get(dataset, {})
        if "mirrors" in override:
            spec = replace(spec, mirrors=tuple(override["mirrors"]))
        if "known_digests" in override:
            spec = replace(spec, known_digests={name: _digests(*values)
                                                for name, values in override["known_digests"].items()})
    return spec


def split_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()


def split_sizes(info: dict) -> dict:
    """What run.json and metrics.json say about the data: its registry name and the images in each split."""
    return {"dataset": info["dataset"], **{f"{split}_images": int(entry["images"])
                                           for split, entry in info["splits"].items()}}
