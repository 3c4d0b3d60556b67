"""stages/core/augment.py against an outside oracle: a translation-only setting moves the image by exactly the
shift it drew, as scipy.ndimage.shift (bilinear) moves it."""

from __future__ import annotations

import numpy as np
import pytest

from stages.core.schema import Augment

NOTHING = {"enabled": True, "rotation": 0.0, "slant": 0.0, "zoom": 0.0, "aspect": 0.0, "translation": 0.0,
           "elastic_alpha": 0.0, "elastic_sigma": 4.0, "stroke": 0.0, "blur": 0.0}


@pytest.fixture(scope="module")
def blobs():
    """Four soft blobs off the centre, each peaking at 1, well inside the 28 x 28 frame."""
    rows, columns = np.mgrid[0:28, 0:28]
    centres = [(12, 14), (15, 11), (13, 16), (14, 13)]
    images = [np.exp(-((rows - y) ** 2 + (columns - x) ** 2) / 8.0) for y, x in centres]
    return np.stack(images)[..., None].astype(np.float32)


def test_with_every_knob_at_zero_the_images_come_back_unchanged(blobs):
    from stages.core import augment

    out = augment.augment(blobs, augment.batch_seed(7, 1, 0), Augment(**NOTHING)).numpy()
    np.testing.assert_allclose(out, blobs, atol=1e-5)


def test_a_translation_moves_each_image_by_the_shift_it_drew(blobs):
    import tensorflow as tf
    from scipy import ndimage

    from stages.core import augment

    settings = Augment(**{**NOTHING, "translation": 3.0})
    seed = augment.batch_seed(7, 1, 0)
    out = augment.augment(blobs, seed, settings).numpy()
    count = tf.shape(blobs)[0]
    shift_x = augment.uniform(seed, augment.SHIFT_X, count, 3.0).numpy()
    shift_y = augment.uniform(seed, augment.SHIFT_Y, count, 3.0).numpy()
    assert np.abs(shift_x).max() > 0.5  # the draw moved something
    for image, moved, dy, dx in zip(blobs, out, shift_y, shift_x, strict=True):
        expected = ndimage.shift(image[..., 0], (dy, dx), order=1, mode="constant")
        np.testing.assert_allclose(moved[..., 0], expected / expected.max(), atol=2e-4)
