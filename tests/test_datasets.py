"""stages/core/datasets.py: the registry's names, and a split's content hash as hashlib computes it."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from stages.core import datasets


def test_a_splits_sha256_is_that_of_its_image_bytes_then_its_label_bytes():
    x, labels = np.arange(2 * 28 * 28, dtype=np.float32).reshape(2, 28, 28, 1), np.array([3, 7], np.uint8)
    assert datasets.split_sha256(x, labels) == hashlib.sha256(x.tobytes() + labels.tobytes()).hexdigest()
    assert datasets.class_names("mnist") == [str(digit) for digit in range(10)]
    assert datasets.class_names("fashion_mnist")[9] == "Ankle boot"
    with pytest.raises(KeyError, match="unknown dataset 'mnsit'; supported: mnist"):
        datasets.dataset_spec("mnsit")
