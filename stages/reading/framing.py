"""MNIST's own recipe for a digit's ink: crop to the ink, scale to fit a 20x20 box keeping the aspect ratio
(Lanczos), paste into 28x28 so the centre of mass lands on the centre pixel (14, 14).

For Fashion-MNIST the recipe is that dataset's instead: the longest edge is scaled to 28 and the item is centred
by its bounding box. A marker's strokes are thinned to MNIST's width first; `unlike_a_digit` says when a framed
input has more separate marks or holes than handwritten digits have.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from stages.core.datasets import IMAGE_SIZE, dataset_spec
from stages.reading.loading import BLANK, ImageError

# A pixel counts as ink for the bounding box above this fraction of the strongest ink. Low, so the faint rim of a
# stroke stays inside the box: an MNIST digit then comes back unchanged (at 0.3 half of them lose a rim pixel).
# Not lower, so JPEG ringing and paper grain do not widen it; on digits drawn 10x larger and saved as PNG, JPEG or
# WebP, every value from 0.05 to 0.4 agreed with the model on the originals within one percent.
INK_THRESHOLD = 0.1
# MNIST's strokes are about 3 pixels wide in the 20x20 box (median 2.9, 90% below 4.3 on mnist-10k); a marker's
# strokes wider than STROKE_LIMIT are eroded back to STROKE_WIDTH before framing, so a bold 1 does not read as a 7.
STROKE_LIMIT, STROKE_WIDTH = 3.5, 3.0
# A model input unlike any handwritten digit, whatever the model's confidence: more separate marks than a digit
# has (over MAX_MARKS of 3 pixels or more) or more enclosed holes (over MAX_HOLES). On mnist_10k's 2,000 held-out
# digits at most 1% have 3 marks and 0.45% more than 3 holes; a page of specks has many marks, a scribble many holes.
MAX_MARKS, MAX_HOLES = 2, 3
# ... or strokes wider than this, in 28x28 pixels: a blob (a speck, a dot, a patch of shadow), not a pen's line. On
# mnist_10k's training digits the widest strokes are 9 pixels (99.9% at most 6); a filled dot is 20.
MAX_STROKE = 11


def ink_bounding_box(ink: np.ndarray, threshold: float = INK_THRESHOLD) -> tuple[slice, slice]:
    strong = ink > threshold * float(ink.max())
    rows, columns = np.flatnonzero(strong.any(axis=1)), np.flatnonzero(strong.any(axis=0))
    if rows.size == 0:
        raise ImageError(BLANK)
    return slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1)


def fit_in_box(ink: np.ndarray, box: int) -> np.ndarray:
    """Scale so the longest side is `box` pixels, keeping the aspect ratio."""
    height, width = ink.shape
    scale = box / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(ink.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS)
    # Lanczos overshoots around sharp edges; MNIST has no values outside [0, 1].
    return np.clip(np.asarray(resized, dtype=np.float32), 0, 1)


def centre_of_mass(array: np.ndarray) -> tuple[float, float]:
    total = float(array.sum())
    rows, columns = np.indices(array.shape)
    return float((rows * array).sum() / total), float((columns * array).sum() / total)


def place_on_canvas(patch: np.ndarray, centring: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """Paste `patch` into a size x size black canvas, centred by its centre of mass ("mass") or its box ("box").

    The shift is in whole pixels, so the patch is never blurred and an MNIST digit lands back where it was; it is
    clamped so no ink falls off the canvas when a lopsided digit would need more than the 4-pixel margin.
    """
    height, width = patch.shape
    if centring == "mass":
        row, column = centre_of_mass(patch)
        top, left = round(size / 2 - row), round(size / 2 - column)
    else:
        top, left = (size - height) // 2, (size - width) // 2
    top, left = min(max(top, 0), size - height), min(max(left, 0), size - width)
    canvas = np.zeros((size, size), dtype=np.float32)
    canvas[top:top + height, left:left + width] = patch
    return canvas


def stroke_width(ink: np.ndarray) -> float:
    """The strokes' typical width in pixels: twice the median distance from their skeleton to the paper."""
    from scipy import ndimage
    from skimage import morphology

    strokes = ink > 0.5
    skeleton = morphology.skeletonize(strokes)
    if not skeleton.any():
        return 0.0
    return float(2 * np.median(ndimage.distance_transform_edt(strokes)[skeleton]))


def thin_strokes(ink: np.ndarray, box: int) -> np.ndarray:
    """The ink with strokes wider than MNIST's (once fitted in `box` pixels) eroded to MNIST's width.

    Only where the ink has at least twice the box's resolution: eroding a digit already MNIST's size would take off
    whole pixels of its strokes.
    """
    from skimage import morphology

    pixels_per_box_pixel = max(ink.shape) / box
    if pixels_per_box_pixel < 2:
        return ink
    excess = stroke_width(ink) / pixels_per_box_pixel - STROKE_WIDTH
    radius = round(excess / 2 * pixels_per_box_pixel)
    if excess <= STROKE_LIMIT - STROKE_WIDTH or radius < 1:
        return ink
    return morphology.erosion(ink, morphology.disk(radius))


def frame(ink: np.ndarray, dataset: str) -> np.ndarray:
    """Ink strength (any size, light on black) as the model's input: crop, fit the dataset's box, centre; 28x28x1."""
    box, centring = dataset_spec(dataset).framing
    rows, columns = ink_bounding_box(ink)
    ink = ink[rows, columns]
    if centring == "mass":  # handwriting, not Fashion-MNIST's photographed items
        ink = thin_strokes(ink, box)
        rows, columns = ink_bounding_box(ink)
        ink = ink[rows, columns]
    patch = fit_in_box(ink, box)
    if patch.max() <= 0:
        raise ImageError("blank image: the ink vanished when scaled down to 28x28")
    # A thin pen on a big canvas comes out faint once scaled down; MNIST strokes reach full white.
    patch /= patch.max()
    return place_on_canvas(patch, centring)[..., np.newaxis]



def unlike_a_digit(array: np.ndarray) -> bool:
    """Whether a model input (28x28x1) has more separate marks, enclosed holes or wider strokes than handwritten
    digits have."""
    from skimage import measure

    ink = array[..., 0] if array.ndim == 3 else array
    marks = measure.label(ink > 0.5, connectivity=2)
    strong_marks = int((np.bincount(marks.ravel())[1:] >= 3).sum())
    stroke = ink > 0.3
    holes = measure.label(stroke, connectivity=2).max() - measure.euler_number(stroke, connectivity=2)
    return strong_marks > MAX_MARKS or holes > MAX_HOLES or a_blob(ink)


def a_blob(array: np.ndarray) -> bool:
    """Whether a model input's strokes are wider than a pen's (a speck, a dot, a patch of shadow framed)."""
    return stroke_width(array[..., 0] if array.ndim == 3 else array) > MAX_STROKE
