"""preprocess stage: turn the raw IDX files into normalized, one-hot, split arrays ready for Keras.

Reads params: seed, data.dataset, data.own, preprocess.val_fraction, preprocess.limit, preprocess.own_test_fraction,
paths.raw, paths.own, paths.processed, paths.class_counts. Reads `{paths.raw}/{dataset}/` (written by the download
stage) with its manifest, and with `data.own: true` your own digits in `{paths.own}` (versioned by the collect
stage).
Writes `{paths.processed}/train.npz`, `val.npz`, `test.npz`, `own_test.npz`, each with `x` (float32 N x 28 x 28 x 1
in [0, 1]), `y` (float32 one-hot N x 10) and `labels` (uint8 N); `{paths.processed}/dataset.json`, which names the
data (e.g. the shipped sample mnist_10k rather than mnist) with each split's size and content hash; and
`{paths.class_counts}` (images per class and split).
Run alone: `python -m stages.preprocess` from the project root.

The validation set is split off the training images (after `preprocess.limit` keeps the first N of them),
stratified by class and seeded, so the same seed always holds out the same images.

Own digits (`data.own: true`): each goes either to training or to the fourth split, own_test, by its hash
(stages/reading/own.py: `held_out`), so it never changes sides when more digits arrive. Those for training follow
the dataset's training images in train.npz, which then also holds `own` (bool N: which rows are yours, for
train.own_weight); validation stays the dataset's own. own_test.npz is written always (empty without own digits)
so that evaluate can depend on it; dataset.json lists the split only when `data.own` is on.
"""

from __future__ import annotations

import stages.core.venv  # noqa: F401  (first: without the project's packages, one line, not a traceback)

from pathlib import Path

import numpy as np
import pandas as pd

from stages.core.datasets import (
    IMAGE_SIZE,
    NUM_CLASSES,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    class_names,
    dataset_spec,
    split_sha256,
)
from stages.core.entry import stage_main
from stages.core.errors import PipelineError
from stages.core.files import write_csv
from stages.core.idx import IdxError, load_images_labels
from stages.core.records import processed_folder, raw_folder, read_manifest, write_dataset_info, write_split
from stages.core.schema import Params
from stages.reading import own


def check_images(images: np.ndarray, name: str) -> None:
    """The models expect 28 x 28 grey bytes; anything else is the wrong dataset, not something to resize silently."""
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise IdxError(f"{name}: images are {'x'.join(map(str, images.shape[1:]))}, expected {IMAGE_SIZE}x{IMAGE_SIZE} "
                       "(an MNIST-style dataset)")
    if images.dtype != np.uint8:
        raise IdxError(f"{name}: pixels are {images.dtype}, expected uint8 (0-255)")


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 N x 28 x 28 -> float32 N x 28 x 28 x 1 in [0, 1] (the channel axis Conv2D expects)."""
    return (images.astype(np.float32) / np.float32(255.0))[..., np.newaxis]


def one_hot(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[labels]


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val), each in ascending order, with every class held out in the same proportion.

    The validation size is round(N * val_fraction) (at least one image, at most N - 1). Each class gets the floor
    of its exact share, and the images left over go to the classes with the largest remainders, so every class
    is within one image of proportional; which images of a class go is a seeded permutation.
    """
    labels = np.asarray(labels)
    total = len(labels)
    if total < 2:
        raise PipelineError(f"cannot split {total} image(s) into training and validation sets; raise preprocess.limit")
    val_total = min(max(round(total * val_fraction), 1), total - 1)
    classes, counts = np.unique(labels, return_counts=True)
    shares = counts * val_total / total
    quotas = np.floor(shares).astype(int)
    # Stable sort keeps ties in class order, so the same labels always give the same quotas.
    leftover_order = np.argsort(-(shares - quotas), kind="stable")
    quotas[leftover_order[: val_total - quotas.sum()]] += 1

    rng = np.random.default_rng(seed)
    val_parts = []
    for label, quota in zip(classes, quotas, strict=True):
        members = np.flatnonzero(labels == label)
        val_parts.append(rng.permutation(members)[:quota])
    val_indices = np.sort(np.concatenate(val_parts))
    train_mask = np.ones(total, dtype=bool)
    train_mask[val_indices] = False
    return np.flatnonzero(train_mask), val_indices


def class_counts(split_labels: dict[str, np.ndarray], names: list[str]) -> pd.DataFrame:
    """Long table of images per split and class: columns split, class, name, count (zero counts included)."""
    rows = [
        {"split": split, "class": label, "name": names[label], "count": int(count)}
        for split, labels in split_labels.items()
        for label, count in enumerate(np.bincount(labels, minlength=len(names)))
    ]
    return pd.DataFrame(rows, columns=["split", "class", "name", "count"])


def load_pair(raw_dir: Path, images_name: str, labels_name: str) -> tuple[np.ndarray, np.ndarray]:
    for name in (images_name, labels_name):
        if not (raw_dir / name).is_file():
            raise PipelineError(f"{raw_dir / name} not found: run the download stage first "
                                "(`dvc repro download` or `python -m stages.download`)")
    images, labels = load_images_labels(raw_dir / images_name, raw_dir / labels_name)
    check_images(images, str(raw_dir / images_name))
    return images, labels.astype(np.uint8)


def split_own(images: np.ndarray, labels: np.ndarray, names: list[str], fraction: float) -> dict[str, tuple]:
    """Own digits into "train" and "own_test" (images, labels) by each digit's hash."""
    test = np.array([own.held_out(name, fraction) for name in names], dtype=bool)
    return {"train": (images[~test], labels[~test]), "own_test": (images[test], labels[test])}


def data_info(manifest: dict, splits: dict[str, tuple[np.ndarray, np.ndarray]], own_origin: str | None = None,
              own_train: int = 0) -> dict:
    """dataset.json: the data's registry name, and each split as written (size and content hash of x, labels)."""
    spec = dataset_spec(manifest["dataset"])
    origins = {"train": manifest["files"][TRAIN_IMAGES]["source"], "val": manifest["files"][TRAIN_IMAGES]["source"],
               "test": manifest["files"][TEST_IMAGES]["source"], "own_test": own_origin}
    info = {
        "dataset": spec.name,
        "sample_of": spec.sample_of,
        "content_hash": manifest["content_hash"],
        "splits": {
            split: {"name": spec.test_split if split == "test" else split, "images": len(labels),
                    "sha256": split_sha256(x, labels), "origin": origins[split]}
            for split, (x, labels) in splits.items()
        },
    }
    if "own_test" in splits:
        info["splits"]["train"]["own_images"] = own_train
    return info


def run(params: Params) -> dict[str, int]:
    seed = params.seed
    dataset = params.data.dataset
    val_fraction = params.preprocess.val_fraction
    limit = params.preprocess.limit
    own_test_fraction = params.preprocess.own_test_fraction
    raw_dir = raw_folder(params.paths, dataset)

    manifest = read_manifest(raw_dir)
    train_images, train_labels = load_pair(raw_dir, TRAIN_IMAGES, TRAIN_LABELS)
    test_images, test_labels = load_pair(raw_dir, TEST_IMAGES, TEST_LABELS)
    available = len(train_labels)
    if limit is not None:
        train_images, train_labels = train_images[:limit], train_labels[:limit]

    train_indices, val_indices = stratified_split(train_labels, val_fraction, seed)
    splits = {
        "train": (train_images[train_indices], train_labels[train_indices]),
        "val": (train_images[val_indices], train_labels[val_indices]),
        "test": (test_images, test_labels),
        "own_test": (np.zeros((0, *train_images.shape[1:]), np.uint8), np.zeros(0, np.uint8)),
    }
    own_train = 0
    extra = {"train": {}}
    if params.data.own:
        own.check_layout(own.ensure_folder(params.paths.own))
        mine = split_own(*own.load_digits(params.paths.own), own_test_fraction)
        own_train = len(mine["train"][1])
        dataset_train = len(splits["train"][1])
        splits["train"] = tuple(np.concatenate(parts) for parts in zip(splits["train"], mine["train"], strict=True))
        splits["own_test"] = mine["own_test"]
        extra["train"] = {"own": np.arange(dataset_train + own_train) >= dataset_train}
    written = {}
    for split, (images, labels) in splits.items():
        x = normalize(images)
        write_split(params.paths, split, x=x, y=one_hot(labels), labels=labels, **extra.get(split, {}))
        written[split] = (x, labels)
    if not params.data.own:
        del written["own_test"], splits["own_test"]  # written empty for evaluate's dep, not a split of this data
    write_dataset_info(params.paths, data_info(manifest, written, str(params.paths.own), own_train))
    table = class_counts({split: labels for split, (_, labels) in splits.items()}, class_names(dataset))
    write_csv(params.paths.class_counts, table)

    sizes = {split: len(labels) for split, (_, labels) in splits.items()}
    note = f" (first {len(train_labels)} of {available} training images)" if limit is not None else ""
    if params.data.own:
        note += f"; own digits: {own_train} in train, {sizes['own_test']} in own_test"
    test_name = dataset_spec(manifest["dataset"]).test_split
    print(f"preprocess: {manifest['dataset']} train {sizes['train']}, val {sizes['val']}, {test_name} "
          f"{sizes['test']}{note}; "
          f"seed {seed} -> {processed_folder(params.paths)}")
    return sizes


def main() -> None:
    stage_main(run, fast_exit=True)


if __name__ == "__main__":
    main()
