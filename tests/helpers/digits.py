"""Real MNIST digits from the shipped sample (stages/mnist_10k), and one small model trained on them."""

from __future__ import annotations

from pathlib import Path

from stages.core.datasets import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS

SPLIT_FILES = {"train": (TRAIN_IMAGES, TRAIN_LABELS), "test": (TEST_IMAGES, TEST_LABELS)}


def mnist_digits(folder: Path, split: str, count: int | None = None) -> tuple:
    """The first `count` digits of a split as the preprocess stage stores them (its own loader and normalize):
    float32 N x 28 x 28 x 1 in [0, 1], and uint8 labels."""
    from stages import preprocess

    images, labels = preprocess.load_pair(folder, *SPLIT_FILES[split])
    return preprocess.normalize(images[:count]), labels[:count]


def train_small_model(path: Path, mnist_10k: Path) -> Path:
    """LeNet, 3 epochs of adam on the 8,000 mnist-10k training digits (about 15 s on two cores)."""
    import keras

    from stages.core.architectures import build_model, presets
    from stages.preprocess import one_hot

    digits, labels = mnist_digits(mnist_10k, "train")
    keras.utils.set_random_seed(0)
    model = build_model(presets()["lenet"], name="lenet")
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(digits, one_hot(labels), epochs=3, batch_size=128, verbose=0)
    model.save(path)
    return path
