"""The model's inputs of an image: one digit (`model_input`), or the digits of a written number (`split_number`).

A written number is split into digits by connected components, left to right. Marks that overlap horizontally by
at least half the narrower one's width are strokes of one digit (a 5's flag, a 7's bar, a 4 written in two
strokes); neighbouring digits may overlap less than that.

Nothing in reading/ imports TensorFlow or MLflow: the CLI, the drawing page and the registered image model share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from stages.reading.framing import frame
from stages.reading.ink import NUMBER_REACH, find_ink

# Marks of one digit that do not touch overlap horizontally by at least this share of the narrower one.
SAME_DIGIT_OVERLAP = 0.5
# A group of marks with less than PIECE_AREA of the median digit's ink and less than PIECE_HEIGHT of its height is a
# piece of a neighbouring digit, not a digit.
PIECE_AREA, PIECE_HEIGHT = 0.25, 0.5


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
