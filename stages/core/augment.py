"""Augmentation of the training images, on the fly, from params.yaml's `train.augment`: the one home of it.

Applied to each training batch in train's tf.data pipeline (stages/train.py `make_training_dataset`), never to
validation, test or user images, and never part of the saved model. Every draw is a stateless random op keyed by
(seed, epoch, batch): a run is bit-identical to itself, and a resumed run draws what the uninterrupted one drew.

Per image, light ink on black in [0, 1]:
  1. geometry, in ONE bilinear resampling: rotation, slant (a horizontal shear about the centre: the top leans right
     or left), zoom and aspect (width against height), translation, and Simard et al.'s (2003) elastic distortion
     (a random displacement field smoothed by a Gaussian);
  2. stroke thickness: a share of a 3x3 grey dilation (thicker) or erosion (thinner), a max/min over the pixel's
     neighbours;
  3. blur: a share of a Gaussian blur, as a low-resolution scan;
  then the strongest ink is scaled back to 1, as the reading pipeline frames every digit (reading/framing.py's frame).

Why not Keras' preprocessing layers (RandomRotation, RandomShear, RandomZoom, RandomTranslation,
RandomElasticTransform, RandomGaussianBlur): they draw from a SeedGenerator's state, not from a (seed, epoch,
batch) key; each resamples the image again (four layers, four bilinear blurs); RandomShear shears about the corner,
which also shifts the digit; and RandomElasticTransform (3.15.1, TensorFlow) draws its x and y fields from one seed
(so they are equal) and, with an unknown batch size as in tf.data, transforms the first image and copies it.

Imports TensorFlow: import it from inside a stage's `run()`.
"""

from __future__ import annotations

import math

import tensorflow as tf

from stages.core.schema import Augment

# Sub-keys of a batch's seed, one per draw.
ROTATION, SLANT, ZOOM, ASPECT, SHIFT_X, SHIFT_Y, ELASTIC, STROKE, BLUR = range(9)


def batch_seed(seed: int, epoch, batch) -> tf.Tensor:
    """The stateless seed of one training batch: (seed, epoch) folded with the batch's index in its epoch."""
    base = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_fold_in(base, tf.cast(batch, tf.int64))


def uniform(seed: tf.Tensor, key: int, count, limit: float) -> tf.Tensor:
    """`count` draws from U(-limit, limit), keyed by the batch's seed and the draw's sub-key."""
    return tf.random.stateless_uniform([count], tf.random.experimental.stateless_fold_in(seed, key), -limit, limit)


def gaussian_matrix(size: int, sigma: float) -> tf.Tensor:
    """M with M @ v = v convolved with a normalised Gaussian of `sigma` pixels, zero outside (size x size)."""
    offsets = tf.range(size, dtype=tf.float32)
    taps = tf.exp(-0.5 * ((offsets[:, tf.newaxis] - offsets[tf.newaxis, :]) / sigma) ** 2)
    radius = math.ceil(3 * sigma)
    full = tf.exp(-0.5 * (tf.range(-radius, radius + 1, dtype=tf.float32) / sigma) ** 2)
    return taps / tf.reduce_sum(full)


def smooth(fields: tf.Tensor, sigma: float) -> tf.Tensor:
    """Gaussian blur of (B, H, W, C) fields, zero outside: two small matrix products (on 28x28, several times faster
    than a convolution with the Gaussian's taps)."""
    rows, columns = gaussian_matrix(int(fields.shape[1]), sigma), gaussian_matrix(int(fields.shape[2]), sigma)
    return tf.einsum("ij,bjkc,lk->bilc", rows, fields, columns)


def bilinear(images: tf.Tensor, rows: tf.Tensor, columns: tf.Tensor) -> tf.Tensor:
    """images (B, H, W, 1) sampled at float (rows, columns) of shape (B, H, W); 0 outside the image."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    flat = tf.reshape(images, [-1])
    base = tf.reshape(tf.range(batch) * height * width, (-1, 1, 1))
    top, left = tf.floor(rows), tf.floor(columns)
    result = tf.zeros_like(rows)
    for down, right in ((0, 0), (0, 1), (1, 0), (1, 1)):
        row, column = top + down, left + right
        weight = (1 - tf.abs(rows - row)) * (1 - tf.abs(columns - column))
        inside = (row >= 0) & (row <= tf.cast(height - 1, tf.float32)) & (column >= 0) & (
            column <= tf.cast(width - 1, tf.float32))
        index = base + tf.cast(tf.clip_by_value(row, 0, tf.cast(height - 1, tf.float32)), tf.int32) * width + tf.cast(
            tf.clip_by_value(column, 0, tf.cast(width - 1, tf.float32)), tf.int32)
        result += tf.where(inside, weight * tf.gather(flat, index), 0.0)
    return result[..., tf.newaxis]


def geometry(images: tf.Tensor, seed: tf.Tensor, settings: Augment) -> tf.Tensor:
    """Rotation, slant, zoom, aspect, translation and elastic distortion as one resampling."""
    count = tf.shape(images)[0]
    height, width = int(images.shape[1]), int(images.shape[2])
    angle = uniform(seed, ROTATION, count, math.radians(settings.rotation))
    slant = uniform(seed, SLANT, count, settings.slant)
    zoom = 1 + uniform(seed, ZOOM, count, settings.zoom)
    aspect = 1 + uniform(seed, ASPECT, count, settings.aspect)
    shift_x = uniform(seed, SHIFT_X, count, settings.translation)
    shift_y = uniform(seed, SHIFT_Y, count, settings.translation)
    # Output pixel -> input pixel (the inverse of scale, then slant, then rotate, about the centre, then shift).
    rows, columns = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij")
    centre_y, centre_x = (height - 1) / 2, (width - 1) / 2
    y = rows[tf.newaxis] - centre_y - shift_y[:, tf.newaxis, tf.newaxis]
    x = columns[tf.newaxis] - centre_x - shift_x[:, tf.newaxis, tf.newaxis]
    if settings.elastic_alpha > 0:
        noise = tf.random.stateless_uniform(
            [count, height, width, 2], tf.random.experimental.stateless_fold_in(seed, ELASTIC), -1.0, 1.0)
        field = smooth(noise, settings.elastic_sigma) * settings.elastic_alpha
        y, x = y + field[..., 0], x + field[..., 1]
    cos, sin = (tf.reshape(value, (-1, 1, 1)) for value in (tf.cos(angle), tf.sin(angle)))
    x, y = cos * x + sin * y, -sin * x + cos * y  # rotate back
    x = x - tf.reshape(slant, (-1, 1, 1)) * y  # unslant
    sx, sy = tf.reshape(zoom * aspect, (-1, 1, 1)), tf.reshape(zoom, (-1, 1, 1))
    return bilinear(images, y / sy + centre_y, x / sx + centre_x)


def dilate(images: tf.Tensor) -> tf.Tensor:
    """3x3 grey dilation: the maximum of the pixel and its 8 neighbours (0 outside)."""
    height, width = int(images.shape[1]), int(images.shape[2])
    padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]])
    return tf.reduce_max(tf.stack([padded[:, i:i + height, j:j + width] for i in range(3) for j in range(3)]), 0)


def stroke_width(images: tf.Tensor, seed: tf.Tensor, limit: float) -> tf.Tensor:
    """Thicker (towards the dilation) or thinner (towards the erosion) strokes by a share in [-limit, limit]."""
    share = tf.reshape(uniform(seed, STROKE, tf.shape(images)[0], limit), (-1, 1, 1, 1))
    thicker, thinner = dilate(images), -dilate(-images)
    return images + tf.where(share > 0, share * (thicker - images), -share * (thinner - images))


def blur(images: tf.Tensor, seed: tf.Tensor, sigma: float) -> tf.Tensor:
    """A share in [0, 1] of a Gaussian blur of `sigma` pixels, per image."""
    share = tf.reshape(uniform(seed, BLUR, tf.shape(images)[0], 0.5) + 0.5, (-1, 1, 1, 1))
    return images + share * (smooth(images, sigma) - images)


@tf.autograph.experimental.do_not_convert  # plain TensorFlow ops, no Python control flow on tensors
def augment(images: tf.Tensor, seed: tf.Tensor, settings: Augment) -> tf.Tensor:
    """One training batch (B, 28, 28, 1), augmented by the draws of `seed` (see `batch_seed`)."""
    images = geometry(images, seed, settings)
    if settings.stroke > 0:
        images = stroke_width(images, seed, settings.stroke)
    if settings.blur > 0:
        images = blur(images, seed, settings.blur)
    strongest = tf.reduce_max(images, axis=(1, 2, 3), keepdims=True)
    return tf.clip_by_value(images / tf.maximum(strongest, 1e-3), 0.0, 1.0)
