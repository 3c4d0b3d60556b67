"""Registry of the supported datasets: class names (download details are added by the download stage)."""

from __future__ import annotations

CLASS_NAMES: dict[str, list[str]] = {
    "mnist": [str(digit) for digit in range(10)],
    "fashion_mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ],
}


def class_names(dataset: str) -> list[str]:
    return CLASS_NAMES[dataset]
