"""An oracle for the reader that is not the model: a framed 28x28 input against the MNIST digit it was made from.

Every form in benchmarks/photos.py starts from an MNIST digit, which MNIST itself framed (fit 20x20, centre
of mass at the centre): read back from its photo, the digit must come out as that digit again.
"""

from __future__ import annotations

import numpy as np


def frame_correlation(framed: np.ndarray, original: np.ndarray, shift: int = 1, blur: float = 0.0) -> float:
    """The highest Pearson correlation of the two 28x28 images over shifts of up to `shift` pixels each way (the
    centre of mass is rounded to whole pixels, so a faithful framing may land a pixel off); with `blur`, both are
    blurred by that many pixels first, to compare shapes drawn with other strokes."""
    from scipy import ndimage

    framed = ndimage.gaussian_filter(np.asarray(framed, dtype=np.float64).reshape(28, 28), blur)
    original = ndimage.gaussian_filter(np.asarray(original, dtype=np.float64).reshape(28, 28), blur)
    best = -1.0
    for rows in range(-shift, shift + 1):
        for columns in range(-shift, shift + 1):
            moved = np.roll(framed, (rows, columns), axis=(0, 1))
            if moved.std() and original.std():
                best = max(best, float(np.corrcoef(moved.ravel(), original.ravel())[0, 1]))
    return best


def as_text(array: np.ndarray) -> str:
    """A 28x28 image as 28 lines of characters, for a failure message."""
    shades = " .:-=+*#%@"
    array = np.asarray(array, dtype=np.float64).reshape(28, 28)
    array = array / array.max() if array.max() > 0 else array
    return "\n".join("".join(shades[min(9, int(value * 10))] for value in row) for row in array)


def assert_frames_like(framed: np.ndarray, original: np.ndarray, min_correlation: float = 0.9,
                       blur: float = 0.0) -> None:
    """The framed input shows the original digit: correlation at least `min_correlation` (within a pixel's shift,
    after `blur`). Read back from a clean photo a digit correlates at 0.9 or more, two different digits at 0.2-0.7.
    On failure the message draws both."""
    correlation = frame_correlation(framed, original, blur=blur)
    if correlation < min_correlation:
        drawn = zip(as_text(framed).splitlines(), as_text(original).splitlines(), strict=True)
        pictures = "\n".join(f"{left}  |  {right}" for left, right in drawn)
        raise AssertionError(f"the framed input is not the digit it was made from: correlation {correlation:.2f} < "
                             f"{min_correlation} (framed | original)\n{pictures}")
