"""The paper under the ink: the image turned light-on-dark, the paper's level under every pixel, its grain.

1. transparent pixels are resolved first: when the visible pixels are all one colour (black strokes on a
   transparent canvas, the usual export of a drawing app) the alpha channel is the ink; otherwise the image is
   composited onto white, as image viewers show it;
2. invert when the background, estimated from the border pixels, is light (dark ink on paper -> light ink on
   black); where the writing runs off the edges (a tight crop, a digit cut by the frame, a digit filling its
   picture) the paper's level and grain are measured on the paper part of the border only, not on the whole
   image, of which the ink is then a third or more;
3. the paper's local level is a grey opening at low resolution with a disk wider than any stroke, so grey or
   tinted paper, a lighting gradient and a shadow all go to 0 (crops of 64 pixels or less have no page around the
   digit: their paper is the border's median).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Strongest ink minus background below this (on a 0-1 scale) means there is nothing to classify.
MIN_CONTRAST = 0.1
# Visible pixels whose lightness spreads less than this are one colour: the drawing lives in the alpha channel.
FLAT_COLOUR_SPREAD = 0.25
# Share of each side taken as the border when estimating the background.
BORDER_FRACTION = 0.02
# Ink runs off the edges when the ring of outermost pixels changes between paper and ink at most this often (a
# page of noise changes at every other pixel; a tight crop's strokes cross the edge in a few runs).
EDGE_RUNS = 0.2
# Up to this long side an image is a crop of one digit, with no page (and no lighting) around it.
SMALL_IMAGE = 64
# The paper's level is estimated at this long side, with a disk of this share of it: wider than the stroke of a
# thick marker digit filling the image, narrower than a shadow or the falloff of a lamp.
PAPER_SIZE = 64
PAPER_DISK = 1 / 6


def resolve_transparency(lightness: np.ndarray, alpha: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """(array, is_ink): the alpha channel itself when it carries the drawing, else the image composited on white.

    A drawing exported on a transparent canvas has one stroke colour and the shape only in alpha; whether that
    colour is black or white, compositing would lose the strokes on one of the two backgrounds.
    """
    if alpha is None:
        return lightness, False
    visible = lightness[alpha >= 0.5]
    if visible.size == 0:
        return np.zeros_like(alpha), True
    low, high = np.percentile(visible, [2, 98])
    if high - low < FLAT_COLOUR_SPREAD:
        return alpha, True
    return lightness * alpha + (1 - alpha), False


def border_values(array: np.ndarray) -> np.ndarray:
    thickness = max(1, round(BORDER_FRACTION * min(array.shape)))
    return np.concatenate([
        array[:thickness].ravel(), array[-thickness:].ravel(),
        array[:, :thickness].ravel(), array[:, -thickness:].ravel(),
    ])


def light_on_dark(lightness: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """The image with its ink light and its paper dark, whatever the colours were."""
    array, is_ink = resolve_transparency(lightness, alpha)
    if not is_ink and np.median(border_values(array)) > 0.5:
        array = 1 - array
    return array.astype(np.float32)


def resized(array: np.ndarray, shape: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    size = (shape[1], shape[0])
    return np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize(size, resample), dtype=np.float32)


def paper_level(array: np.ndarray) -> np.ndarray | float:
    """The paper's level under every pixel (light-on-dark): a grey opening, at low resolution, wider than strokes."""
    if max(array.shape) <= SMALL_IMAGE:
        # The median ignores strokes that touch the edge.
        return float(np.median(border_values(array)))
    from skimage import filters, morphology

    shape = tuple(max(1, round(side * PAPER_SIZE / max(array.shape))) for side in array.shape)
    small = resized(array, shape, Image.Resampling.BOX)
    radius = max(1, round(PAPER_DISK * PAPER_SIZE))
    # The disk as a sequence of small footprints: the same opening, several times faster.
    disk = morphology.disk(radius, decomposition="sequence")
    paper = filters.gaussian(morphology.opening(small, disk), sigma=radius / 2)
    return resized(paper, array.shape, Image.Resampling.BILINEAR)


def sample(array: np.ndarray, count: int = 65_536) -> np.ndarray:
    """A regular grid of about `count` pixels: enough for a median, and a page's millions are slow to sort."""
    step = max(1, int(np.sqrt(array.size / count)))
    return array[::step, ::step]


def noise_deviation(values: np.ndarray) -> float:
    """The paper's grain as a standard deviation: the median absolute deviation, which sparse ink barely moves."""
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def ring(array: np.ndarray) -> np.ndarray:
    """The outermost pixels in order around the image (clockwise from the top-left corner)."""
    if min(array.shape) < 2:
        return array.ravel()
    return np.concatenate([array[0, :-1], array[:-1, -1], array[-1, :0:-1], array[:0:-1, 0]])


def edge_paper(ink: np.ndarray) -> np.ndarray | None:
    """Where the writing runs off the edges (a tight crop, a digit cut by the frame): a mask of the border pixels
    that are paper, else None.

    Ink crossing the edge shows on the ring of outermost pixels as a few runs of a second level, at least
    MIN_CONTRAST apart from the paper's; grain and noise flip between the two levels every other pixel.
    """
    values = ring(ink)
    if values.size < 8 or np.ptp(values) < MIN_CONTRAST:
        return None
    from skimage import filters

    threshold = float(filters.threshold_otsu(values))
    inky = values > threshold
    if inky.all() or not inky.any() or values[inky].mean() - values[~inky].mean() < MIN_CONTRAST:
        return None
    if np.mean(inky != np.roll(inky, 1)) > EDGE_RUNS:
        return None
    return border_values(ink) <= threshold


def paper_values(array: np.ndarray, edge: np.ndarray | None) -> np.ndarray:
    """The pixels the paper's level and grain are measured on: the whole image (sampled), where ink is sparse;
    the paper part of the border where the ink runs off the edges and fills a third or more of the image."""
    return sample(array).ravel() if edge is None else border_values(array)[edge]
