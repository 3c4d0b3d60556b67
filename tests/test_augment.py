"""Augmentation (stages/core/augment.py) measured from outside: each knob alone, over DRAWS draws of a known image,
moves a quantity computed here with NumPy and SciPy (the ink's centroid, its principal axis, its moments, its mass,
its spread) by no more than the knob's param and by at least half of it somewhere; everything off is the identity;
a (seed, epoch, batch) key gives the same batch twice."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from stages.core.schema import Augment

DRAWS = 64
OFF = {"enabled": True, "rotation": 0.0, "slant": 0.0, "zoom": 0.0, "aspect": 0.0, "translation": 0.0,
       "elastic_alpha": 0.0, "elastic_sigma": 4.0, "stroke": 0.0, "blur": 0.0}


def settings(**knobs) -> Augment:
    return Augment(**{**OFF, **knobs})


def augmented(image: np.ndarray, seed: tuple[int, int, int] = (0, 0, 0), **knobs) -> np.ndarray:
    """DRAWS augmentations of one 28x28 image (one batch, one draw per row), as float64 N x 28 x 28."""
    import tensorflow as tf

    from stages.core import augment

    batch = tf.constant(np.repeat(image[np.newaxis, :, :, np.newaxis], DRAWS, axis=0).astype(np.float32))
    return augment.augment(batch, augment.batch_seed(*seed), settings(**knobs)).numpy()[..., 0].astype(np.float64)


def blob(sigma_rows: float, sigma_columns: float) -> np.ndarray:
    """A Gaussian blob at the image's centre, light on black, peak 1: its moments are known."""
    rows, columns = np.indices((28, 28), dtype=np.float64) - 13.5
    return np.exp(-0.5 * ((rows / sigma_rows) ** 2 + (columns / sigma_columns) ** 2))


def centroids(images: np.ndarray) -> np.ndarray:
    return np.array([ndimage.center_of_mass(image) for image in images])


def covariances(images: np.ndarray) -> np.ndarray:
    """Each image's 2x2 ink covariance, (rows, columns)."""
    rows, columns = np.indices(images.shape[1:], dtype=np.float64)
    found = []
    for image in images:
        mass = image.sum()
        centre_row, centre_column = (image * rows).sum() / mass, (image * columns).sum() / mass
        dr, dc = rows - centre_row, columns - centre_column
        found.append([[(image * dr * dr).sum(), (image * dr * dc).sum()],
                      [(image * dr * dc).sum(), (image * dc * dc).sum()]])
    return np.array(found) / images.sum(axis=(1, 2))[:, None, None]


def principal_axis(covariance: np.ndarray) -> float:
    """The angle of the ink's long axis, degrees."""
    return float(np.degrees(0.5 * np.arctan2(2 * covariance[0, 1], covariance[1, 1] - covariance[0, 0])))


def ring(thickness: int = 4) -> np.ndarray:
    """A thick ring of full ink: erosion keeps a plateau at 1, so no rescaling hides the stroke change."""
    rows, columns = np.indices((28, 28)) - 13.5
    radius = np.hypot(rows, columns)
    return ((radius > 7) & (radius <= 7 + thickness)).astype(np.float64)


def assert_within_and_reached(measured: np.ndarray, limit: float, tolerance: float) -> None:
    """No draw beyond the param (within the resampling's tolerance), and at least one at half of it or more."""
    assert np.max(np.abs(measured)) <= limit + tolerance, (np.max(np.abs(measured)), limit)
    assert np.max(np.abs(measured)) >= limit / 2, (np.max(np.abs(measured)), limit)


def test_every_knob_at_zero_is_the_identity(test_digits):
    digit = test_digits[0].astype(np.float64) / 255
    np.testing.assert_allclose(augmented(digit), np.repeat(digit[np.newaxis] / digit.max(), DRAWS, 0), atol=1e-6)


def test_translation_moves_the_centroid_by_up_to_its_pixels():
    image = blob(2.5, 2.5)
    shift = centroids(augmented(image, translation=2.0)) - centroids(image[np.newaxis])
    for axis in (0, 1):  # each axis drawn on its own, up to the translation either way
        assert_within_and_reached(shift[:, axis], 2.0, tolerance=0.02)
    assert (shift < 0).any() and (shift > 0).any()


def test_a_translation_moves_each_image_by_exactly_the_shift_it_drew():
    """Translation alone is a bilinear shift by the drawn pixels, as scipy.ndimage.shift (order 1) moves an image."""
    import tensorflow as tf

    from stages.core import augment

    rows, columns = np.mgrid[0:28, 0:28]
    blobs = np.stack([np.exp(-((rows - y) ** 2 + (columns - x) ** 2) / 8.0)
                      for y, x in [(12, 14), (15, 11), (13, 16), (14, 13)]])[..., None].astype(np.float32)
    seed = augment.batch_seed(7, 1, 0)
    moved = augment.augment(blobs, seed, settings(translation=3.0)).numpy()
    shift_x = augment.uniform(seed, augment.SHIFT_X, tf.shape(blobs)[0], 3.0).numpy()
    shift_y = augment.uniform(seed, augment.SHIFT_Y, tf.shape(blobs)[0], 3.0).numpy()
    assert np.abs(shift_x).max() > 0.5  # the draw moved something
    for image, out, dy, dx in zip(blobs, moved, shift_y, shift_x, strict=True):
        expected = ndimage.shift(image[..., 0], (dy, dx), order=1, mode="constant")
        np.testing.assert_allclose(out[..., 0], expected / expected.max(), atol=2e-4)


def test_rotation_turns_the_principal_axis_by_up_to_its_degrees():
    image = blob(1.5, 6.0)  # long along the columns: axis at 0 degrees
    turned = np.array([principal_axis(c) for c in covariances(augmented(image, rotation=10.0))])
    assert abs(principal_axis(covariances(image[np.newaxis])[0])) < 1e-6
    assert_within_and_reached(turned, 10.0, tolerance=0.3)
    assert (turned < 0).any() and (turned > 0).any()


def test_slant_shears_columns_by_up_to_its_share_of_the_rows():
    image = blob(4.0, 2.0)
    covariance = covariances(augmented(image, slant=0.3))
    shear = covariance[:, 0, 1] / covariance[:, 0, 0]  # columns moved per row: cov(r, c) / var(r) on a round blob
    assert_within_and_reached(shear, 0.3, tolerance=0.01)


@pytest.mark.parametrize("knob, axis", [("zoom", 0), ("aspect", 1)])
def test_zoom_and_aspect_scale_the_ink_by_up_to_their_share(knob, axis):
    """zoom scales both axes; aspect the width only (the height keeps its spread)."""
    image = blob(3.0, 3.0)
    before = covariances(image[np.newaxis])[0]
    after = covariances(augmented(image, **{knob: 0.2}))
    scale = np.sqrt(after[:, axis, axis] / before[axis, axis]) - 1
    assert_within_and_reached(scale, 0.2, tolerance=0.02)
    if knob == "aspect":
        np.testing.assert_allclose(after[:, 0, 0], before[0, 0], rtol=0.02)


def test_stroke_changes_the_ink_mass_by_up_to_its_share_of_a_dilation_or_erosion():
    image = ring()
    footprint = np.ones((3, 3))
    thicker = ndimage.grey_dilation(image, footprint=footprint, mode="constant").sum() - image.sum()
    thinner = ndimage.grey_erosion(image, footprint=footprint, mode="constant").sum() - image.sum()
    change = augmented(image, stroke=0.6).sum(axis=(1, 2)) - image.sum()
    share = np.where(change > 0, change / thicker, -change / thinner)  # signed: thicker > 0, thinner < 0
    assert_within_and_reached(share, 0.6, tolerance=1e-4)
    assert (share > 0.05).any() and (share < -0.05).any(), "strokes both thicker and thinner"


def test_blur_spreads_a_point_by_up_to_its_sigma_and_lowers_its_peak():
    point = np.zeros((28, 28))
    point[14, 14] = 1.0
    blurred = augmented(point, blur=1.5)
    spread = np.sqrt(covariances(blurred)[:, 0, 0])  # a point's spread is the blur's own sigma (times its share)
    assert_within_and_reached(spread, 1.5, tolerance=0.02)
    peak_share = blurred.max(axis=(1, 2)) / blurred.sum(axis=(1, 2))  # the point held all its ink in one pixel
    assert np.all(peak_share < 1)


def test_elastic_distortion_moves_ink_by_about_its_field_and_more_with_alpha(test_digits):
    """Simard's field: U(-1, 1) noise per pixel and axis, smoothed by a normalised Gaussian of sigma, times alpha; its
    standard deviation is alpha / sqrt(3) / sqrt(4 pi sigma^2) pixels (0.8 px at 20 and 4). The ink's centroid moves
    by an average of the field: within three of those; a stronger alpha moves more ink."""
    digit = test_digits[0].astype(np.float64) / 255
    field = 20.0 / np.sqrt(3) / np.sqrt(4 * np.pi * 4.0 ** 2)
    distorted = augmented(digit, elastic_alpha=20.0)
    assert np.abs(distorted - digit / digit.max()).max(axis=(1, 2)).min() > 0.1  # every draw moved some ink
    assert np.linalg.norm(centroids(distorted) - centroids(digit[np.newaxis]), axis=1).max() < 3 * field
    moved = {alpha: np.abs(augmented(digit, elastic_alpha=alpha) - digit / digit.max()).mean() for alpha in (5.0, 40.0)}
    assert moved[5.0] < moved[40.0] / 2, moved


def test_the_same_key_gives_the_same_batch_and_another_key_another(test_digits):
    digit = test_digits[0].astype(np.float64) / 255
    knobs = Augment(**{**OFF, "rotation": 8.0, "slant": 0.2, "zoom": 0.1, "aspect": 0.15, "translation": 1.5,
                       "elastic_alpha": 20.0, "stroke": 0.6, "blur": 1.0}).model_dump()
    first = augmented(digit, (3, 2, 1), **knobs)
    np.testing.assert_array_equal(first, augmented(digit, (3, 2, 1), **knobs))
    for other in ((4, 2, 1), (3, 3, 1), (3, 2, 2)):
        assert np.abs(augmented(digit, other, **knobs) - first).max() > 0.1, other


def test_enabled_false_trains_on_the_images_as_they_are(test_digits):
    """train's batches: with `enabled: false` every knob is ignored; with it on, the same knobs change the images."""
    from stages.train import make_training_dataset

    images = (test_digits[:8, :, :, np.newaxis] / 255).astype(np.float32)
    labels = np.eye(10, dtype=np.float32)[np.arange(8)]
    knobs = {**OFF, "rotation": 8.0, "translation": 1.5, "stroke": 0.6, "blur": 1.0}

    def first_batch(enabled: bool) -> np.ndarray:
        dataset = make_training_dataset(images, labels, 8, 0, range(1),
                                        augment=Augment(**{**knobs, "enabled": enabled}))
        return next(iter(dataset))[0].numpy()

    plain, changed = first_batch(False), first_batch(True)
    assert sorted(map(bytes, plain)) == sorted(map(bytes, images))  # the same images, shuffled
    assert not any(np.array_equal(row, original) for row in changed for original in images)
