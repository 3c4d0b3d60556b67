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

from stages.reading.loading import BLANK, ImageError

# Strongest ink minus background below this (on a 0-1 scale) means there is nothing to classify.
MIN_CONTRAST = 0.1
# Visible pixels whose lightness spreads less than this are one colour: the drawing lives in the alpha channel.
FLAT_COLOUR_SPREAD = 0.25
# Share of each side taken as the border when estimating the background.
BORDER_FRACTION = 0.02
# Ink runs off the edges when the ring of outermost pixels changes between paper and ink at most this often (a
# page of noise changes at every other pixel; a tight crop's strokes cross the edge in a few runs).
EDGE_RUNS = 0.2
# A crop of the writing may leave this many pixels of paper round it.
CROP_MARGIN = 3
# Up to this long side an image is a crop of one digit, with no page (and no lighting) around it.
SMALL_IMAGE = 64
# The paper's level is found at this long side at most (a page's paper varies slowly); its edges (a shadow's) are
# brought back at full resolution, where the level meets the image.
PAPER_SIZE = 256
# The ink is taken off the paper by a grey opening with a square wider than every stroke (measured per image) and
# at most this share of the long side: the stroke of a thick marker digit that fills its image.
WIDEST_STROKE = 1 / 3
# The square is this many times the writing's widest strokes (their 90th percentile): where two strokes cross, the
# ink is up to 1.4 times as wide.
STROKE_MARGIN = 1.5
# The writing's ink is at least this share of the strongest.
INK_SHARE = 0.5
# The paper's own light is taken as at least this (a page in deep shadow would otherwise turn grain into ink).
DARKEST_PAPER = 0.2
# A mark is part of a wider region (a shadow's rim) when more than this share of its rim is as high as itself.
RIM_SHARE = 0.2


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


def opening(array: np.ndarray, radius: int) -> np.ndarray:
    """A grey opening with a square of side 2 * radius + 1, of the image continued beyond its edges by its mirror
    image: a shadow cut by the frame stays a wide region, a stroke along an edge only twice as wide as it is."""
    from scipy import ndimage

    padded = np.pad(array, radius, mode="symmetric")
    return ndimage.grey_opening(padded, size=(2 * radius + 1,) * 2)[radius:-radius, radius:-radius]


def contrast_floor(smooth: np.ndarray) -> float:
    """The least step that stands out of the (smoothed) image's grain: a few grain deviations, measured on the
    differences of pixels 4 apart (farther than the smoothing reaches), which neither ink covering most of a crop
    nor a shadow moves."""
    values = sample(smooth)
    return max(5.0 * noise_deviation(values[:, 4:] - values[:, :-4]) / np.sqrt(2), MIN_CONTRAST / 2)


def stroke_radius(smooth: np.ndarray) -> int | None:
    """Half the side of a square wider than every stroke of the (smoothed, light-on-dark) image, in its pixels;
    None where no ink stands clear of the image's edges (a crop of the writing, with no page round it), 0 where
    nothing narrower than WIDEST_STROKE stands out of the grain at all.

    The ink is what an opening with the widest square takes off; of it, the marks clear of the image's edges
    (a shadow comes from beyond the frame) and standing above the page all round (not a rim or a corner of a wider
    region) are the writing, and its strokes are as wide as the distance from their skeleton to the paper says.
    """
    from scipy import ndimage
    from skimage import measure, morphology

    widest = max(1, round(WIDEST_STROKE * max(smooth.shape) / 2))
    opened = opening(smooth, widest)
    taken = smooth - opened
    floor = contrast_floor(smooth)
    if taken.max() < floor:
        return 0
    # The writing is the strong ink: its share of the paper's light (as dark under a shadow as beside it) is at
    # least half the strongest's; paper's soft blotches and shadows' rims are fainter.
    share = taken / np.maximum(1 - opened, DARKEST_PAPER)
    marks = measure.label((taken > floor) & (share > INK_SHARE * share.max()))
    # Each mark's rim: the pixels just outside it, and how many of them are as high as the mark itself.
    rim = ndimage.maximum_filter(marks, size=3) * (marks == 0)
    height = np.bincount(marks.ravel(), smooth.ravel()) / np.maximum(np.bincount(marks.ravel()), 1)
    level = (smooth >= height[rim] - floor) & (rim > 0)
    writing = np.bincount(rim.ravel(), level.ravel(), len(height)) <= RIM_SHARE * np.bincount(rim.ravel(),
                                                                                            minlength=len(height))
    writing[np.unique(ring(marks))] = False
    writing[0] = False
    strokes = writing[marks]
    if not strokes.any():
        return None
    widths = 2 * ndimage.distance_transform_edt(strokes)[morphology.skeletonize(strokes)]
    return int(min(widest, max(1, np.ceil(STROKE_MARGIN * np.percentile(widths, 90) / 2))))


def paper_level(array: np.ndarray) -> tuple[np.ndarray | float, np.ndarray | None]:
    """(the paper's level under every pixel, light-on-dark; where the paper is, for paper_values).

    The level is a grey opening of the page with a square wider than every stroke, so grey or tinted paper, a
    lighting gradient and a shadow of any shape wider than a stroke all go to 0. It is found at low resolution and
    brought back to the image's own: where the page is paper, its level is the page itself (lightly smoothed); under
    a stroke, the highest paper level within the square's reach (a shadow's edge stays a sharp edge, and a corner
    of a shadow too narrow for the square is paper too). Crops of 64 pixels or less and crops of the writing (its
    strokes run off the edges, none stands clear of them: a tight crop, a marker digit filling its picture) have no
    page around the digit: their paper is the border's median.
    """
    from scipy import ndimage

    scale = min(1.0, PAPER_SIZE / max(array.shape))
    shape = tuple(max(1, round(side * scale)) for side in array.shape)
    small = ndimage.gaussian_filter(resized(array, shape, Image.Resampling.BOX), 1.0)
    radius = None if max(array.shape) <= SMALL_IMAGE else stroke_radius(small)
    level = float(np.median(border_values(array)))
    edge = edge_paper(array - level)
    if not radius:
        if max(array.shape) <= SMALL_IMAGE:
            return level, edge
        sharp = max(np.abs(np.diff(small, axis=axis)).max(initial=0) for axis in (0, 1)) >= MIN_CONTRAST / 4
        if sharp and edge is not None:
            # A crop of the writing (sharp-edged ink running off the image's edges): the median ignores strokes
            # that touch the edge.
            return level, edge
        if sharp and edge_paper((array - level)[CROP_MARGIN:-CROP_MARGIN, CROP_MARGIN:-CROP_MARGIN]) is not None:
            # ... or cropped a pixel or two outside the ink: the border is paper, the ink may fill the rest.
            return level, np.ones(border_values(array).shape, dtype=bool)
        # Nothing narrower than a third of the image stands out of the grain clear of the edges, and no writing
        # runs off them: paper, its lighting, its grain, a shadow from beyond the frame.
        raise ImageError(BLANK)
    page, where = page_level(array, small, radius, scale)
    if edge is not None and edge_paper(array - page) is not None:
        # Writing runs off the edges even with the page's lighting and shadows taken off: a crop of the writing.
        return level, edge
    return page, where


def page_level(array: np.ndarray, small: np.ndarray, radius: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The level of a page round the writing, at the array's resolution (see paper_level), and where it is paper;
    `small` is the array at `scale`, smoothed, and `radius` half the side of a square wider than its strokes."""
    from scipy import ndimage
    from skimage import morphology

    opened = opening(small, radius)
    # A region twice as wide as any stroke somewhere (a shadow, never a digit) is paper whole, its narrow corners
    # too: it is rebuilt from there under the page (a stroke touching it is paper only up to the shadow's level).
    seeds = opening(small, 2 * radius)
    paper = np.maximum(opened, morphology.reconstruction(seeds, small, method="dilation"))
    # Back at full resolution, under a stroke the paper is the highest level within a few low-resolution pixels;
    # elsewhere it is the page itself: lightly smoothed, or as it is where the paper's level steps (a shadow's or
    # the page's sharp edge, which smoothing would turn into a line of ink).
    reach = 2 * int(np.ceil(3 / scale)) + 1  # the low resolution and its smoothing blur an edge over 3 pixels
    paper = resized(paper, array.shape, Image.Resampling.BILINEAR)
    highest = ndimage.maximum_filter(paper, size=reach, mode="nearest")
    steps = highest - ndimage.minimum_filter(paper, size=reach, mode="nearest") > 2 * contrast_floor(small)
    smooth = ndimage.gaussian_filter(array, 1.0)
    level = np.minimum(np.where(steps, array, smooth), highest)
    # The paper is where the page is at its level: the ink may cover half of a crop.
    return level, smooth - level < contrast_floor(small)


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


def paper_values(array: np.ndarray, where: np.ndarray | None) -> np.ndarray:
    """The pixels the paper's level and grain are measured on: where the paper is (a mask of the image, or of its
    border where ink runs off the edges of a small crop), or the whole image (sampled) where ink is sparse."""
    if where is None:
        return sample(array).ravel()
    if where.ndim == 1:
        return border_values(array)[where]
    return sample(array)[sample(where)]
