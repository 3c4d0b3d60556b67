"""Images of handwriting in MNIST's form: one 28x28 array per digit, from clean drawings to photos of paper.

Reads PNG, JPEG, BMP, GIF (first frame), WebP and anything else Pillow opens, of any size and mode (grayscale,
RGB, RGBA, palette, 16-bit), upright per its EXIF orientation, and finds the ink the way a scan cleaner would:

1. grayscale; transparent pixels are resolved first: when the visible pixels are all one colour (black strokes on
   a transparent canvas, the usual export of a drawing app) the alpha channel is the ink; otherwise the image is
   composited onto white, as image viewers show it;
2. invert when the background, estimated from the border pixels, is light (dark ink on paper -> light ink on
   black); where the writing runs off the edges (a tight crop, a digit cut by the frame, a digit filling its
   picture) the paper's level and grain are measured on the paper part of the border only, not on the whole
   image, of which the ink is then a third or more;
3. subtract the paper: its local level is a grey opening at low resolution with a disk wider than any stroke, so
   grey or tinted paper, a lighting gradient and a shadow all go to 0 (crops of 64 pixels or less have no page
   around the digit: their paper is the border's median);
4. find the ink by hysteresis between Otsu's threshold and a floor of a few noise deviations (measured on the image
   itself), so grainy paper stays out and faint pencil stays in; erase the rules of ruled or squared paper (two or
   more straight lines across most of the page, found with a Hough transform); drop specks far smaller than the
   largest mark and marks far from the writing;
5. MNIST's own recipe: crop to the ink, scale to fit a 20x20 box keeping the aspect ratio (Lanczos), paste into
   28x28 so the centre of mass lands on the centre pixel (14, 14).

For Fashion-MNIST step 5 follows that dataset's recipe instead: the longest edge is scaled to 28 and the item is
centred by its bounding box.

A written number is split into digits by connected components, left to right. Marks that overlap horizontally by
at least half the narrower one's width are strokes of one digit (a 5's flag, a 7's bar, a 4 written in two
strokes); neighbouring digits may overlap less than that.

Nothing here imports TensorFlow or MLflow: the CLI, the drawing page and the registered image model share it.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stages.core.datasets import IMAGE_SIZE, dataset_spec
from stages.core.errors import PipelineError

# Far above any photo of a digit (a 24-megapixel camera frame is 24 million), far below what would exhaust memory:
# a crafted PNG of a few kilobytes can claim billions of pixels.
MAX_IMAGE_PIXELS = 40_000_000
# Images are shrunk to this long side before float processing: a digit is at most 20 pixels tall in the end, so
# this keeps even a digit covering a twentieth of a large photo at 50 pixels, and bounds the memory per image.
WORKING_SIZE = 1024
# A pixel counts as ink for the bounding box above this fraction of the strongest ink. Low, so the faint rim of a
# stroke stays inside the box: an MNIST digit then comes back unchanged (at 0.3 half of them lose a rim pixel).
# Not lower, so JPEG ringing and paper grain do not widen it; on digits drawn 10x larger and saved as PNG, JPEG or
# WebP, every value from 0.05 to 0.4 agreed with the model on the originals within one percent.
INK_THRESHOLD = 0.1
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
# Ink rises this many noise deviations above the paper (the hysteresis' high end); a stroke continues down to
# INK_FLOOR deviations. Measured per image with the median absolute deviation, which ink barely moves.
NOISE_SIGMAS = 5.0
INK_FLOOR = 3.0
# The paper's grain is taken off the ink's strength up to this many deviations: more would thin the strokes.
PAPER_FLOOR = 1.5
# Rules of notebook paper: near-horizontal or near-vertical lines this long relative to the page, at least two
# parallel (a single long stroke is a 1 or a 7's bar, not a ruling).
RULE_TILT_DEGREES = 8
RULE_LENGTH = 0.75
RULE_WIDTH = 0.02  # at most, of the page's other side
MIN_RULES = 2
# A mark smaller than this share of the largest one is a speck of dirt or grain, not a stroke.
SPECK_FRACTION = 0.04
# Marks farther than this many writing heights from the rest are not part of it (a smudge, a page number).
DIGIT_REACH, NUMBER_REACH = 0.5, 1.5
# MNIST's strokes are about 3 pixels wide in the 20x20 box (median 2.9, 90% below 4.3 on mnist-10k); a marker's
# strokes wider than STROKE_LIMIT are eroded back to STROKE_WIDTH before framing, so a bold 1 does not read as a 7.
STROKE_LIMIT, STROKE_WIDTH = 3.5, 3.0
# Marks of one digit that do not touch overlap horizontally by at least this share of the narrower one.
SAME_DIGIT_OVERLAP = 0.5
# A group of marks with less than PIECE_AREA of the median digit's ink and less than PIECE_HEIGHT of its height is a
# piece of a neighbouring digit, not a digit.
PIECE_AREA, PIECE_HEIGHT = 0.25, 0.5
# A model input unlike any handwritten digit, whatever the model's confidence: more separate marks than a digit
# has (over MAX_MARKS of 3 pixels or more) or more enclosed holes (over MAX_HOLES). On mnist_10k's 2,000 held-out
# digits at most 1% have 3 marks and 0.45% more than 3 holes; a page of specks has many marks, a scribble many holes.
MAX_MARKS, MAX_HOLES = 2, 3
# ITU-R 601-2 luma, the weights Pillow's own convert("L") uses.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)

BLANK = "blank image: no ink stands out from the background"


class ImageError(PipelineError):
    """One input image cannot be classified; the message says why, without the file name."""


# --- reading ----------------------------------------------------------------------------------------------------

def load_image(source: str | os.PathLike | bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image file (a path) or its bytes, upright per EXIF; raise ImageError for anything unreadable."""
    if isinstance(source, bytes):
        if not source:
            raise ImageError("empty: no image data")
        opened = io.BytesIO(source)
    else:
        opened = Path(source)
        if not opened.exists():
            raise ImageError("file not found")
        if opened.is_dir():
            raise ImageError("is a folder, not an image file")
    # Pillow only warns between its own limit and twice that; an image that large is refused here all the same.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(opened) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageError(f"{width}x{height} pixels is over the limit of {max_pixels:,} pixels")
                image.load()
                return ImageOps.exif_transpose(image)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageError(f"over Pillow's pixel limit, refused as a possible decompression bomb ({error})") from None
        except UnidentifiedImageError:
            raise ImageError("not an image Pillow can read (PNG, JPEG, BMP, GIF, WebP, ...)") from None
        except PermissionError:
            raise ImageError("permission denied") from None
        # Pillow's decoders report a damaged file with any of these, depending on the format.
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            raise ImageError(f"corrupt or truncated image ({error})") from None


def shrink(image: Image.Image, longest_side: int = WORKING_SIZE) -> Image.Image:
    """A copy no longer than `longest_side` on either side; modes are normalised first so resizing can filter."""
    if image.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB" if image.mode != "1" else "L")
    elif image.mode in ("P", "PA"):
        # Palette resizing is nearest-neighbour only, and the palette may carry transparency.
        has_alpha = image.mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif image.mode.startswith("I") or image.mode == "F":
        image = image.convert("F")
    if max(image.size) > longest_side:
        image = image.copy()
        # thumbnail() premultiplies alpha while filtering, so transparent pixels' colour does not bleed in.
        image.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
    return image


def image_to_arrays(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Lightness in [0, 1] and alpha in [0, 1], or None for alpha when every pixel is opaque."""
    if image.mode == "F":
        # 16- and 32-bit images have no fixed white level: use their own range.
        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        return (values - low) / (high - low) if high > low else np.zeros_like(values), None
    if image.mode in ("LA", "La", "RGBA", "RGBa") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255
        alpha = rgba[..., 3]
        return rgba[..., :3] @ LUMA_WEIGHTS, (alpha if alpha.min() < 1 else None)
    if image.mode == "L":
        return np.asarray(image, dtype=np.float32) / 255, None
    return (np.asarray(image.convert("RGB"), dtype=np.float32) / 255) @ LUMA_WEIGHTS, None


# --- finding the ink --------------------------------------------------------------------------------------------

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


def rule_pixels(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(pixels of `mask` on the rules of ruled or squared paper, the widest rule's width in pixels).

    A rule is one of two or more parallel thin straight lines across most of the page (a few degrees off when the
    page is turned). A thick stroke as long as the page (a tall 1) is no rule: it is as wide as several.
    """
    from skimage import transform

    rules, width = np.zeros_like(mask), 0
    rows, columns = np.nonzero(mask)
    tilts = np.deg2rad(np.linspace(-RULE_TILT_DEGREES, RULE_TILT_DEGREES, 2 * RULE_TILT_DEGREES + 1))
    # A horizontal line's normal points along the rows (theta = 90 degrees); a vertical one's along the columns.
    for normal, length, across in ((np.pi / 2, mask.shape[1], mask.shape[0]), (0.0, mask.shape[0], mask.shape[1])):
        accumulator, angles, distances = transform.hough_line(mask, theta=normal + tilts)
        _, peak_angles, peak_distances = transform.hough_line_peaks(
            accumulator, angles, distances, threshold=RULE_LENGTH * length, min_distance=3, min_angle=len(tilts),
            num_peaks=64)
        bands = {}
        for angle, distance in zip(peak_angles, peak_distances, strict=True):
            # A rule votes in a few neighbouring distances: its band spans those with a third of the peak's votes.
            votes = accumulator[:, int(np.argmin(np.abs(angles - angle)))]
            peak = low = high = int(np.argmin(np.abs(distances - distance)))
            while low > 0 and votes[low - 1] >= votes[peak] / 3:
                low -= 1
            while high < len(votes) - 1 and votes[high + 1] >= votes[peak] / 3:
                high += 1
            if distances[high] - distances[low] <= RULE_WIDTH * across:
                bands[float(distances[low]), float(distances[high])] = float(angle)
        if len(bands) < MIN_RULES:
            continue
        for (start, end), angle in bands.items():
            # Two pixels more each side for the rule's blurred edge.
            offset = columns * np.cos(angle) + rows * np.sin(angle)
            on_rule = (offset >= start - 2) & (offset <= end + 2)
            rules[rows[on_rule], columns[on_rule]] = True
            width = max(width, int(np.ceil(end - start)) + 5)
    return rules, width


@dataclass(frozen=True, eq=False)
class Ink:
    """The ink around the writing, cropped from the working-size image: its strength in [0, 1], each mark's pixels,
    the marks themselves, and the scale back to the original image's pixels."""

    strength: np.ndarray
    labels: np.ndarray  # each kept mark's label on its pixels and its rim; 0 elsewhere
    marks: list  # skimage RegionProperties of the kept marks (bounding boxes in working-image pixels)
    scale: float  # original pixels per working pixel


def find_ink(image: Image.Image, reach: float = DIGIT_REACH) -> Ink:
    """The ink of an image: paper, grain, lighting and rules removed; specks and far-away marks dropped."""
    from skimage import filters, measure, morphology

    working = shrink(image)
    array = light_on_dark(*image_to_arrays(working))
    ink = array - paper_level(array)
    edge = edge_paper(ink)
    ink -= float(np.median(paper_values(ink, edge)))
    small = max(ink.shape) <= SMALL_IMAGE
    grain = noise_deviation(paper_values(ink, edge))
    # Thresholds are taken on a lightly smoothed copy: grain averages out, strokes (>= 2 pixels wide) do not.
    smooth = ink if small else filters.gaussian(ink, sigma=1)
    smooth_grain = noise_deviation(paper_values(smooth, edge))
    peak = float(smooth.max())
    if peak < MIN_CONTRAST or peak < NOISE_SIGMAS * smooth_grain:
        raise ImageError(BLANK)
    high = max(float(filters.threshold_otsu(smooth)), NOISE_SIGMAS * smooth_grain)
    low = min(high, max(INK_THRESHOLD * peak, INK_FLOOR * smooth_grain))
    mask = filters.apply_hysteresis_threshold(smooth, low, high)
    if not small:
        # Rules are looked for among all the faint lines: the hysteresis keeps only those a stroke crosses.
        rules, width = rule_pixels(smooth > low)
        rules &= mask
        if rules.any():
            # Where a stroke crosses a rule, the rule's pixels between the two stroke ends stay ink.
            kept = mask & ~rules
            rows, columns = np.nonzero(kept)
            if rows.size:
                near = (slice(max(0, rows.min() - width), rows.max() + width + 1),
                        slice(max(0, columns.min() - width), columns.max() + width + 1))
                kept[near] |= rules[near] & morphology.closing(kept[near], morphology.disk(width))
            mask = kept
    labels = measure.label(mask, connectivity=2)
    marks = sorted(measure.regionprops(labels), key=lambda mark: mark.area, reverse=True)
    if not marks:
        raise ImageError(BLANK)
    marks = [mark for mark in marks if mark.area >= SPECK_FRACTION * marks[0].area and mark.area >= 4]
    if not marks:  # specks only
        raise ImageError(BLANK)
    marks = nearby(marks, reach)
    # Only the writing's surroundings matter from here on: a small digit on a large page is a small crop.
    rim = 1 if small else 2
    top = max(0, min(mark.bbox[0] for mark in marks) - rim)
    left = max(0, min(mark.bbox[1] for mark in marks) - rim)
    bottom = max(mark.bbox[2] for mark in marks) + rim
    right = max(mark.bbox[3] for mark in marks) + rim
    labels, ink = labels[top:bottom, left:right], ink[top:bottom, left:right]
    kept = np.isin(labels, [mark.label for mark in marks])
    # The rim of a stroke (antialiasing, a soft pencil edge) is ink too: each mark takes the pixels next to it
    # (where the rims of two marks meet, the higher label takes the pixel).
    labels = morphology.dilation(np.where(kept, labels, 0), morphology.disk(rim))
    if small:
        ink = ink / max(float(ink[kept].max()), 1e-6)
    else:
        floor = PAPER_FLOOR * grain
        ink = (ink - floor) / max(float(np.percentile(ink[kept], 99)) - floor, 1e-6)
    strength = np.clip(np.where(labels > 0, ink, 0), 0, 1).astype(np.float32)
    return Ink(strength, labels, marks, max(image.size) / max(working.size))


def nearby(marks: list, reach: float) -> list:
    """The largest mark and every mark within `reach` times the writing's height of those already kept."""
    kept, rest = [marks[0]], marks[1:]
    top, left, bottom, right = marks[0].bbox
    grew = True
    while grew and rest:
        grew = False
        margin = reach * (bottom - top)
        for mark in list(rest):
            mark_top, mark_left, mark_bottom, mark_right = mark.bbox
            if (mark_top < bottom + margin and mark_bottom > top - margin
                    and mark_left < right + margin and mark_right > left - margin):
                kept.append(mark)
                rest.remove(mark)
                top, left = min(top, mark_top), min(left, mark_left)
                bottom, right = max(bottom, mark_bottom), max(right, mark_right)
                grew = True
    return kept


def digit_groups(marks: list) -> list[list]:
    """Marks grouped into digits, left to right: marks overlapping horizontally by half the narrower are one digit."""
    groups = [[mark.bbox[1], mark.bbox[3], [mark]] for mark in sorted(marks, key=lambda mark: mark.bbox[1])]
    merged = True
    while merged:
        merged = False
        for first in range(len(groups)):
            for second in range(first + 1, len(groups)):
                (left_a, right_a, marks_a), (left_b, right_b, marks_b) = groups[first], groups[second]
                overlap = min(right_a, right_b) - max(left_a, left_b)
                if overlap >= SAME_DIGIT_OVERLAP * min(right_a - left_a, right_b - left_b):
                    groups[first] = [min(left_a, left_b), max(right_a, right_b), marks_a + marks_b]
                    del groups[second]
                    merged = True
                    break
            if merged:
                break
    groups.sort(key=lambda group: group[0])
    # A piece far smaller and shorter than a digit (a broken-off serif or foot) joins the nearest digit beside it.
    while len(groups) > 1:
        areas = [sum(mark.area for mark in marks) for _, _, marks in groups]
        heights = [max(m.bbox[2] for m in marks) - min(m.bbox[0] for m in marks) for _, _, marks in groups]
        pieces = [index for index in range(len(groups)) if areas[index] < PIECE_AREA * np.median(areas)
                  and heights[index] < PIECE_HEIGHT * np.median(heights)]
        if not pieces:
            break
        piece = pieces[0]
        left, right, marks = groups.pop(piece)
        gaps = [max(left - group[1], group[0] - right) for group in groups]
        nearest = groups[int(np.argmin(gaps))]
        nearest[0], nearest[1], nearest[2] = min(nearest[0], left), max(nearest[1], right), nearest[2] + marks
    return [group_marks for _, _, group_marks in groups]


# --- MNIST's framing --------------------------------------------------------------------------------------------

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


# --- digits and numbers -----------------------------------------------------------------------------------------

def model_input(image: Image.Image, dataset: str) -> np.ndarray:
    """An image of one digit (or item) as the model's input: float32 in [0, 1], 28x28x1, light ink on black."""
    return frame(find_ink(image).strength, dataset)


@dataclass(frozen=True, eq=False)
class Digit:
    """One digit of a written number: the model's input and its box in the original image (x, y, width, height)."""

    array: np.ndarray
    box: tuple[int, int, int, int]


def split_number(image: Image.Image, dataset: str) -> list[Digit]:
    """The digits of a written number, left to right, each framed as the model's input."""
    ink = find_ink(image, reach=NUMBER_REACH)
    digits = []
    for group in digit_groups(ink.marks):
        own = np.isin(ink.labels, [mark.label for mark in group])
        top = min(mark.bbox[0] for mark in group)
        left = min(mark.bbox[1] for mark in group)
        bottom = max(mark.bbox[2] for mark in group)
        right = max(mark.bbox[3] for mark in group)
        box = tuple(round(value * ink.scale) for value in (left, top, right - left, bottom - top))
        digits.append(Digit(frame(np.where(own, ink.strength, 0), dataset), box))
    return digits


def unlike_a_digit(array: np.ndarray) -> bool:
    """Whether a model input (28x28x1) has more separate marks or enclosed holes than handwritten digits have."""
    from skimage import measure

    ink = array[..., 0] if array.ndim == 3 else array
    marks = measure.label(ink > 0.5, connectivity=2)
    strong_marks = int((np.bincount(marks.ravel())[1:] >= 3).sum())
    stroke = ink > 0.3
    holes = measure.label(stroke, connectivity=2).max() - measure.euler_number(stroke, connectivity=2)
    return strong_marks > MAX_MARKS or holes > MAX_HOLES


def to_png_image(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(array[..., 0] * 255).astype(np.uint8), mode="L")
