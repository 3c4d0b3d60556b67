"""The ink of an image: the writing, with paper, grain, lighting, rules, specks and far-away marks removed.

The ink is found by hysteresis between Otsu's threshold and a floor of a few noise deviations (measured on the
image itself), so grainy paper stays out and faint pencil stays in; the rules of ruled or squared paper (two or
more straight lines across most of the page, found with a Hough transform) are erased; specks far smaller than the
largest mark and marks far from the writing are dropped. Paper and lighting are taken off first (paper.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from stages.reading.framing import INK_THRESHOLD
from stages.reading.loading import BLANK, ImageError, image_to_arrays, shrink
from stages.reading.paper import (
    DARKEST_PAPER,
    MIN_CONTRAST,
    SMALL_IMAGE,
    light_on_dark,
    noise_deviation,
    paper_level,
    paper_values,
)

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
    origin: tuple[int, int] = (0, 0)  # the working-image pixel (row, column) of strength[0, 0]


def find_ink(image: Image.Image, reach: float = DIGIT_REACH) -> Ink:
    """The ink of an image: paper, grain, lighting and rules removed; specks and far-away marks dropped."""
    from skimage import filters, measure, morphology

    working = shrink(image)
    array = light_on_dark(*image_to_arrays(working))
    level, edge = paper_level(array)
    # The ink's share of the paper's light, not the difference: a shadow dims the ink as much as the paper.
    ink = (array - level) / np.maximum(1 - level, DARKEST_PAPER)
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
    return Ink(strength, labels, marks, max(image.size) / max(working.size), (top, left))


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
