"""The model's inputs of an image: one digit (`model_input`), or the digits of a written number (`split_number`).

A written number is split into digits by connected components, left to right. Marks that overlap horizontally by
at least half the narrower one's width are strokes of one digit (a 5's flag, a 7's bar, a 4 written in two
strokes); neighbouring digits may overlap less than that. Digits that touch are one mark: a mark wider than a
digit is cut along the path from its top to its bottom that crosses the least ink (where the two touch), and each
digit says how sure its cut was. A small mark low between two digits and apart from both is a decimal point (or a
comma, where it runs below the digits), and a gap wider than most of a digit's height is a space: they are shown
in the number as separators, never read as digits. Specks, blobs (strokes wider than a pen's, framed) and groups
whose largest piece is no pen stroke (a dash of touching specks, a column of scattered ones) are no digits at all;
a page whose digits hold less than half its ink is specks or scribbles, not a number.

Nothing in reading/ imports TensorFlow or MLflow: the CLI, the drawing page and the registered image model share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from stages.reading.framing import a_blob, frame, stroke_width
from stages.reading.ink import NUMBER_REACH, Ink, find_ink
from stages.reading.loading import ImageError

# Marks of one digit that do not touch overlap horizontally by at least this share of the narrower one.
SAME_DIGIT_OVERLAP = 0.5
# A group of marks with less than PIECE_AREA of the median digit's ink and less than PIECE_HEIGHT of its height is a
# piece of a neighbouring digit, not a digit.
PIECE_AREA, PIECE_HEIGHT = 0.25, 0.5
# A mark wider than TOUCHING_ASPECT times its height is digits that touch: 99% of MNIST's digits are narrower than
# 1.35 (median 0.8), a wide 5 drawn with the drawing page's thick pen is 1.58; two digits side by side are wider.
# From MAYBE_TOUCHING (10% of MNIST's digits are wider, and a 1 touching a 4) it is cut only where the cut is sure
# (SURE_CUT: the cut crosses less than that share of the mark's typical column's ink, as where two digits meet in
# one stroke; a wide 0 or 2 has two or three strokes across every inner path). Measured on digits of mnist-10k's
# held-out set: 2 of 150 single digits written on paper and none of 60 drawn on the page are cut, 39 of 60 pairs
# written touching are cut into their two digits. Each digit cut from it is at least NARROWEST_DIGIT of the height
# wide (a 1)...
TOUCHING_ASPECT, MAYBE_TOUCHING, SURE_CUT, NARROWEST_DIGIT = 1.6, 0.9, 0.75, 0.2
# ... and holds at least DIGIT_SHARE of its ink (a 1 beside a 0 holds a third) and spans DIGIT_HEIGHT of its height
# (a 7's bar or a 5's flag, joined to the rest by a thin stroke, does not); each side is a stroke (`a_stroke`: a
# wide 5 cut where its bowl meets its flag leaves a piece that is none, and the 5 stays whole).
DIGIT_SHARE, DIGIT_HEIGHT = 0.2, 0.65
# The cut's path costs this much ink (in pixels) per step aside, and strays at most SEAM_DRIFT of the height aside.
SEAM_STEP, SEAM_DRIFT = 0.3, 0.4
# A decimal point or a comma: at most SEPARATOR_SIZE of the digits' height in both directions, below the middle of
# the line, at least SEPARATOR_GAP of the height from the digits on both sides (closer, it is a piece of one).
SEPARATOR_SIZE, SEPARATOR_GAP = 0.3, 0.1
# A gap between two digits wider than this share of their height is a space (thousands written apart).
SPACE_GAP = 0.75
# A digit is written with a stroke: its largest connected piece of ink runs along its skeleton at least STROKE_LENGTH
# pen widths and spans STROKE_SPAN of the digit's height. A speck is about as long as wide, a dash of two or three
# touching specks about one width longer, a column of scattered specks is mostly paper; a marker's 1 with strokes a
# quarter of its height runs three widths, a 5's body (its flag apart) spans most of the digit.
# Measured on the ink above STROKE_INK of its strength: at half strength a thin, grainy pen's 5 breaks into bits.
STROKE_LENGTH, STROKE_SPAN, STROKE_INK = 1.5, 0.4, 0.25
# The digits of a written number hold most of its ink (specks far smaller than the largest mark are gone before):
# where those read as digits hold less than NUMBER_INK of it, the page is specks or scribbles, and no number.
NUMBER_INK = 0.5
NO_DIGITS = "no digits found: only specks or marks unlike any digit"


@dataclass(frozen=True, eq=False)
class Digit:
    """One digit of a written number: the model's input, its box in the original image (x, y, width, height), how
    sure its split from its neighbours is (1.0: paper all round; lower: cut from a digit it touched, by how much
    its cut column stands out) and the separator written before it ("", ".", "," or " ")."""

    array: np.ndarray
    box: tuple[int, int, int, int]
    split: float = 1.0
    before: str = ""


def model_input(image: Image.Image, dataset: str) -> np.ndarray:
    """An image of one digit (or item) as the model's input: float32 in [0, 1], 28x28x1, light ink on black."""
    return frame(find_ink(image).strength, dataset)


@dataclass
class Group:
    """Marks read as one digit, or (before cutting) as digits that touch; boxes in working-image pixels."""

    marks: list
    top: int
    left: int
    bottom: int
    right: int
    split: float = 1.0
    before: str = ""
    pixels: np.ndarray | None = None  # a part cut from touching digits: its pixels in the ink's crop

    @classmethod
    def of(cls, marks: list) -> Group:
        return cls(marks, min(m.bbox[0] for m in marks), min(m.bbox[1] for m in marks),
                   max(m.bbox[2] for m in marks), max(m.bbox[3] for m in marks))

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def area(self) -> int:
        return sum(mark.area for mark in self.marks)


def overlapping_groups(marks: list) -> list[Group]:
    """Marks grouped left to right: marks overlapping horizontally by half the narrower are one digit."""
    groups = [Group.of([mark]) for mark in sorted(marks, key=lambda mark: mark.bbox[1])]
    merged = True
    while merged:
        merged = False
        for first in range(len(groups)):
            for second in range(first + 1, len(groups)):
                a, b = groups[first], groups[second]
                overlap = min(a.right, b.right) - max(a.left, b.left)
                if overlap >= SAME_DIGIT_OVERLAP * min(a.width, b.width):
                    groups[first] = Group.of(a.marks + b.marks)
                    del groups[second]
                    merged = True
                    break
            if merged:
                break
    return sorted(groups, key=lambda group: group.left)


def separators(groups: list[Group]) -> list[Group]:
    """The groups without the decimal points and commas among them, each digit knowing the separator before it."""
    height = float(np.median([group.height for group in groups]))
    line_top = float(np.median([group.top for group in groups]))
    line_bottom = float(np.median([group.bottom for group in groups]))
    kept = []
    for index, group in enumerate(groups):
        inside = 0 < index < len(groups) - 1
        small = group.height <= SEPARATOR_SIZE * height and group.width <= SEPARATOR_SIZE * height
        low = (group.top + group.bottom) / 2 > (line_top + line_bottom) / 2
        apart = inside and min(group.left - groups[index - 1].right,
                               groups[index + 1].left - group.right) >= SEPARATOR_GAP * height
        if small and low and apart:
            # A comma runs below the digits' line, a point sits on it.
            groups[index + 1].before = "," if group.bottom > line_bottom + 0.1 * height else "."
            continue
        kept.append(group)
    for previous, group in zip(kept, kept[1:], strict=False):
        if not group.before and group.left - previous.right > SPACE_GAP * height:
            group.before = " "
    return kept


def join_pieces(groups: list[Group]) -> list[Group]:
    """A piece far smaller and shorter than a digit (a broken-off serif or foot) joins the nearest digit beside it."""
    while len(groups) > 1:
        areas = [group.area for group in groups]
        heights = [group.height for group in groups]
        pieces = [index for index in range(len(groups)) if areas[index] < PIECE_AREA * np.median(areas)
                  and heights[index] < PIECE_HEIGHT * np.median(heights)]
        if not pieces:
            break
        piece = groups.pop(pieces[0])
        gaps = [max(piece.left - group.right, group.left - piece.right) for group in groups]
        nearest = int(np.argmin(gaps))
        joined = Group.of(groups[nearest].marks + piece.marks)
        joined.before = groups[nearest].before
        groups[nearest] = joined
    return groups


def seam(core: np.ndarray, narrowest: int, spanning: float) -> tuple[np.ndarray, float] | None:
    """The path from top to bottom, one column per row and moving at most one column a row, that crosses the least
    ink of `core` (seam carving's dynamic programme) while leaving each side at least `narrowest` columns and
    DIGIT_SHARE of the ink over `spanning` of the rows: (its column in every row, the ink it crosses); None where
    no path leaves both sides so."""
    height, width = core.shape
    total = core.sum()
    crossed = core.copy()
    came = np.zeros(core.shape, dtype=int)
    for row in range(1, height):
        # From the column up-left, straight up or up-right; a step aside costs a little, so paths run straight.
        options = np.stack([np.r_[np.inf, crossed[row - 1, :-1]] + SEAM_STEP, crossed[row - 1],
                            np.r_[crossed[row - 1, 1:], np.inf] + SEAM_STEP])
        came[row] = options.argmin(axis=0) - 1
        crossed[row] += options.min(axis=0)
    ends = np.arange(narrowest, width - narrowest + 1)
    # The least ink first; among equals, the path ending nearest the middle.
    for end in ends[np.lexsort((np.abs(ends - width / 2), crossed[-1, ends]))]:
        path = np.empty(height, dtype=int)
        path[-1] = end
        for row in range(height - 1, 0, -1):
            path[row - 1] = path[row] + came[row, path[row]]
        on_left = np.arange(width) < path[:, np.newaxis]
        left = float(core[on_left].sum())
        spans = [np.flatnonzero(np.r_[(core * side).any(axis=1), True]) for side in (on_left, ~on_left)]
        spans = [rows[-2] - rows[0] + 1 if len(rows) > 1 else 0 for rows in spans]
        if (DIGIT_SHARE * total <= left <= (1 - DIGIT_SHARE) * total and np.ptp(path) <= SEAM_DRIFT * height
                and min(spans) >= spanning * height
                and path.min() >= narrowest and path.max() <= width - narrowest):
            return path, float(core[np.arange(height), np.clip(path, 0, width - 1)].sum())
    return None


def cut_touching(group: Group, ink: Ink, height: float) -> list[Group]:
    """The digits in a group wider than a digit: cut along the path from top to bottom through the least ink (two
    digits touching at a point are cut through that point), again while a part is still too wide. Each part's
    `split` says how little ink the cut crossed: 1 - the ink crossed over the ink of the group's typical column."""
    tall = max(group.height, height)
    if group.width <= MAYBE_TOUCHING * tall:
        return [group]
    own = own_pixels(group, ink)
    rows = slice(group.top - ink.origin[0], group.bottom - ink.origin[0])
    columns = slice(group.left - ink.origin[1], group.right - ink.origin[1])
    core = (own & (ink.strength > 0.5))[rows, columns].astype(float)
    # Wider than any digit, the group holds two: the halves need to span less of its height to be cut.
    wide = group.width > TOUCHING_ASPECT * tall
    found = seam(core, max(1, round(NARROWEST_DIGIT * tall)), PIECE_HEIGHT if wide else DIGIT_HEIGHT)
    if found is None:
        return [group]
    path, crossed = found
    typical = float(np.median(core.sum(axis=0)[core.sum(axis=0) > 0]))
    sure = float(np.clip(1 - crossed / typical, 0, 1))
    if not wide and sure < SURE_CUT:
        return [group]
    # The path's column in every row of the crop (above and below the group, its first and last).
    boundary = np.empty(own.shape[0], dtype=int)
    boundary[:rows.start] = path[0]
    boundary[rows] = path
    boundary[rows.stop:] = path[-1]
    left = own & (np.arange(own.shape[1]) < (boundary + columns.start)[:, np.newaxis])
    parts = [part_of(group, ink, pixels, min(group.split, sure), before)
             for pixels, before in ((left, group.before), (own & ~left, ""))]
    if not all(a_stroke(part, ink) for part in parts):  # a cut leaves two digits, or it is no cut
        return [group]
    return [digit for part in parts for digit in cut_touching(part, ink, height)]


def own_pixels(group: Group, ink: Ink) -> np.ndarray:
    """The group's pixels in the ink's crop: its marks' (and their rims), or those of the part it was cut to."""
    if group.pixels is not None:
        return group.pixels
    return np.isin(ink.labels, [mark.label for mark in group.marks])


def part_of(group: Group, ink: Ink, pixels: np.ndarray, split: float, before: str) -> Group:
    """The part of a group holding `pixels`, its box (working-image pixels) that of its strong ink."""
    rows, columns = np.nonzero(pixels & (ink.strength > 0.5))
    top, left = rows.min() + ink.origin[0], columns.min() + ink.origin[1]
    bottom, right = rows.max() + 1 + ink.origin[0], columns.max() + 1 + ink.origin[1]
    return Group(group.marks, int(top), int(left), int(bottom), int(right), split, before, pixels)


def digit_groups(ink: Ink) -> list[Group]:
    """The digits of the ink, left to right: marks grouped, separators set apart, pieces joined, touching cut."""
    groups = separators(overlapping_groups(ink.marks))
    groups = join_pieces(groups)
    height = float(np.median([group.height for group in groups]))
    return [part for group in groups for part in cut_touching(group, ink, height)]


def a_stroke(group: Group, ink: Ink) -> bool:
    """Whether the group's largest connected piece of ink is a pen's stroke (STROKE_LENGTH, STROKE_SPAN)."""
    from skimage import measure, morphology

    rows = slice(group.top - ink.origin[0], group.bottom - ink.origin[0])
    columns = slice(group.left - ink.origin[1], group.right - ink.origin[1])
    pieces = measure.label((own_pixels(group, ink) & (ink.strength > STROKE_INK))[rows, columns], connectivity=2)
    if not pieces.any():
        return False
    piece = pieces == np.bincount(pieces.ravel())[1:].argmax() + 1
    spanned = np.flatnonzero(piece.any(axis=1))
    length = int(morphology.skeletonize(piece).sum())
    return (spanned[-1] - spanned[0] + 1 >= STROKE_SPAN * group.height
            and length >= STROKE_LENGTH * stroke_width(piece.astype(np.float32)))


def box(group: Group, ink: Ink) -> tuple[int, int, int, int]:
    """(x, y, width, height) in the original image's pixels."""
    return tuple(round(value * ink.scale) for value in (group.left, group.top, group.width, group.height))


def split_number(image: Image.Image, dataset: str) -> list[Digit]:
    """The digits of a written number, left to right, each framed as the model's input; ImageError when none is."""
    ink = find_ink(image, reach=NUMBER_REACH)
    digits, before, read = [], "", 0.0
    for group in digit_groups(ink):
        strength = np.where(own_pixels(group, ink), ink.strength, 0)
        array = frame(strength, dataset)
        if a_blob(array) or not a_stroke(group, ink):  # no digit (a space before it still counts)
            before = before or group.before
            continue
        digits.append(Digit(array, box(group, ink), group.split, (group.before or before) if digits else ""))
        read += float(strength.sum())
        before = ""
    if not digits or read < NUMBER_INK * float(ink.strength.sum()):
        raise ImageError(NO_DIGITS)
    return digits
