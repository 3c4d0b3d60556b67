"""Held-out MNIST digits redrawn in other writers' styles, to measure how a model generalises to other hands.

Built with SciPy, scikit-image and Pillow, apart from the training augmentation (stages/core/augment.py), so the
table measures more than a model learning its own augmentation. Each style has a strength inside the training
ranges of params.yaml's defaults ("in") and one beyond them ("beyond"). A digit is redrawn at 4x (112 px), brought
back to 28x28 and framed the way the reading pipeline frames every digit (crop, fit 20x20, centre of mass).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

SCALE = 4  # the redrawing resolution, times 28


def _affine(big: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """`big` mapped by the 2x2 `matrix` (output = matrix @ input) about its centre, on a canvas twice as large."""
    size = big.shape[0]
    canvas = np.pad(big, size // 2)
    centre = (np.array(canvas.shape) - 1) / 2
    inverse = np.linalg.inv(matrix)
    return ndimage.affine_transform(canvas, inverse, offset=centre - inverse @ centre, order=1)


def slanted(big, rng, shear):
    return _affine(big, np.array([[1.0, 0.0], [rng.choice([-1, 1]) * shear, 1.0]]))  # (row, column): columns lean


def rotated(big, rng, degrees):
    angle = np.radians(rng.choice([-1, 1]) * degrees)
    return _affine(big, np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]))


def squashed(big, rng, share):
    """Narrower (or wider, every other digit) by `share` of the width."""
    factor = 1 - share if rng.random() < 0.5 else 1 / (1 - share)
    return _affine(big, np.diag([1.0, factor]))


def thickened(big, rng, pixels):
    from skimage import morphology

    return morphology.dilation(big, morphology.disk(round(pixels * SCALE)))


def thinned(big, rng, pixels):
    from skimage import morphology

    return morphology.erosion(big, morphology.disk(round(pixels * SCALE)))


def low_resolution(big, rng, side):
    """Scanned at `side` pixels, blurred back up."""
    image = Image.fromarray(big.astype(np.float32), mode="F")
    return np.asarray(image.resize((side, side), Image.Resampling.BOX).resize(big.shape, Image.Resampling.BICUBIC))


def sloppy(big, rng, pixels):
    """Wobbly strokes: a smooth random displacement of about `pixels` (at 28x28) everywhere."""
    shape = big.shape
    fields = [ndimage.gaussian_filter(rng.uniform(-1, 1, shape), 5 * SCALE) for _ in range(2)]
    fields = [field / (field.std() + 1e-9) * pixels * SCALE for field in fields]
    rows, columns = np.indices(shape)
    return ndimage.map_coordinates(big, [rows + fields[0], columns + fields[1]], order=1)


# name: (redraw, strength inside the default training ranges, strength beyond them)
STYLES = {
    "slanted": (slanted, 0.2, 0.45),
    "rotated": (rotated, 8, 20),
    "squashed/stretched": (squashed, 0.15, 0.4),
    "thickened": (thickened, 0.6, 1.5),
    "thinned": (thinned, 0.4, 0.8),
    "blurred low-res": (low_resolution, 14, 10),
    "sloppy": (sloppy, 1.0, 2.0),
}


def restyle(digits: np.ndarray, style: str, strength: float, seed: int = 0) -> np.ndarray:
    """uint8 28x28 digits (white on black) redrawn in `style`: float32 N x 28 x 28 x 1 model inputs."""
    from stages.reading.framing import frame

    redraw = STYLES[style][0]
    rng = np.random.default_rng(seed)
    inputs = []
    for digit in digits:
        big = np.asarray(Image.fromarray(digit).resize((28 * SCALE,) * 2, Image.Resampling.BICUBIC), np.float32)
        big = np.clip(redraw(np.clip(big / 255, 0, 1), rng, strength), 0, 1)
        small = np.asarray(Image.fromarray(big.astype(np.float32), mode="F").resize(
            (big.shape[1] // SCALE, big.shape[0] // SCALE), Image.Resampling.BOX))
        inputs.append(frame(np.clip(small, 0, 1), "mnist") if small.max() > 0.05 else np.zeros((28, 28, 1), np.float32))
    return np.stack(inputs).astype(np.float32)


def style_table(model, digits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy on the digits as they are ("plain") and in every style, inside and beyond the training ranges."""
    from stages.preprocess import normalize

    def accuracy(inputs):
        return float(np.mean(model.predict(inputs, batch_size=500, verbose=0).argmax(axis=1) == labels))

    table = {"plain": accuracy(normalize(digits))}
    for style, (_, inside, beyond) in STYLES.items():
        table[f"{style} (in)"] = accuracy(restyle(digits, style, inside))
        table[f"{style} (beyond)"] = accuracy(restyle(digits, style, beyond))
    return table
