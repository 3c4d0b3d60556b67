"""Digits drawn as a pen draws them: an MNIST digit's skeleton as pen strokes, drawn on the drawing page's canvas;
one person's steady handwriting with a quirk. Photos and scans of paper are benchmarks/photo_forms.py.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from benchmarks.photo_forms import INK

# --- strokes: a digit as a pen would draw it -----------------------------------------------------------------------

def pen_strokes(digit: np.ndarray) -> list[list[tuple[float, float]]]:
    """The digit's skeleton as pen strokes in 28x28 pixel coordinates (x, y of pixel centres), each a polyline.

    Walks the skeleton from its ends: every pixel is drawn once, a branch point starts a new stroke.
    """
    from skimage.morphology import skeletonize

    skeleton = skeletonize(digit > 100)
    left = {(int(row), int(column)) for row, column in zip(*np.nonzero(skeleton), strict=True)}

    def neighbours(pixel):
        row, column = pixel
        around = [(row + dr, column + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc]
        # Straight neighbours first, so a walk does not cut corners it will have to come back for.
        return sorted((p for p in around if p in left), key=lambda p: abs(p[0] - row) + abs(p[1] - column))

    strokes = []
    while left:
        ends = [pixel for pixel in left if len(neighbours(pixel)) <= 1]
        pixel = min(ends or left)
        stroke = [pixel]
        left.discard(pixel)
        while nexts := neighbours(pixel):
            pixel = nexts[0]
            stroke.append(pixel)
            left.discard(pixel)
        strokes.append([(column + 0.5, row + 0.5) for row, column in stroke])
    return strokes


def drawn(strokes, scale: float, width: int, size: int = 280, offset: tuple[float, float] = (0, 0)) -> Image.Image:
    """The strokes drawn black on a white canvas, the way the drawing page's canvas draws them."""
    from PIL import ImageDraw

    canvas = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(canvas)
    for stroke in strokes:
        points = [(offset[0] + x * scale, offset[1] + y * scale) for x, y in stroke]
        for x, y in points:
            draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill="black")
        if len(points) > 1:
            draw.line(points, fill="black", width=width)
    return canvas


# --- one person's handwriting: a steady style with a quirk ----------------------------------------------------------

def _arc(cx: float, cy: float, rx: float, ry: float, start: float, stop: float, points: int = 24) -> list:
    """Points on an ellipse from angle `start` to `stop` (degrees, 0 = right, 90 = down: image coordinates)."""
    angles = np.radians(np.linspace(start, stop, points))
    return [(cx + rx * np.cos(angle), cy + ry * np.sin(angle)) for angle in angles]


# Each digit as this person writes it: pen strokes in a unit box (x right, y down). They write as many engineers in
# Europe do: a slashed zero, a 1 with a long flag (and so a 7 with a crossbar). An MNIST-trained model reads their 0
# as 8 and their 1 as 7 (a 1 with a short flag and a foot, or a crossed 7, it reads right: those are no quirks to it).
QUIRKY = (0, 1)
PERSON_STROKES: dict[int, list[list[tuple[float, float]]]] = {
    0: [_arc(0.5, 0.5, 0.32, 0.46, -90, 270, 40), [(0.92, 0.02), (0.08, 0.98)]],
    1: [[(0.0, 0.35), (0.75, 0.02), (0.6, 0.96)]],
    2: [_arc(0.5, 0.3, 0.3, 0.26, 190, 390) + [(0.18, 0.96), (0.86, 0.96)]],
    3: [_arc(0.48, 0.27, 0.3, 0.23, 200, 450) + _arc(0.48, 0.72, 0.33, 0.24, -90, 150)],
    4: [[(0.62, 0.04), (0.14, 0.64), (0.88, 0.64)], [(0.66, 0.3), (0.66, 0.96)]],
    5: [[(0.82, 0.05), (0.3, 0.05), (0.25, 0.45)] + _arc(0.5, 0.68, 0.32, 0.28, -140, 150)],
    6: [[(0.72, 0.04)] + _arc(0.5, 0.7, 0.3, 0.26, 200, 560, 40)],
    7: [[(0.12, 0.05), (0.88, 0.05), (0.42, 0.96)], [(0.3, 0.5), (0.86, 0.5)]],
    8: [_arc(0.5, 0.26, 0.25, 0.22, 90, 450, 30) + _arc(0.5, 0.72, 0.3, 0.24, -90, 270, 30)],
    9: [_arc(0.5, 0.3, 0.28, 0.24, 0, 360, 30) + [(0.78, 0.3), (0.74, 0.96)]],
}


def person_strokes(label: int, rng: np.random.Generator, box: tuple[float, float, float, float]) -> list:
    """One of the person's digits, placed in `box` (x, y, width, height): their steady style, with the small wobble
    of a hand (a slant, a size and a position that vary a little, and a little tremor)."""
    x, y, width, height = box
    slant = rng.normal(0.12, 0.05)
    scale = rng.uniform(0.85, 1.0)
    shift = rng.normal(0, 0.03, size=2)
    strokes = []
    for stroke in PERSON_STROKES[label]:
        points = np.asarray(stroke, dtype=np.float64)
        points = (points - 0.5) * scale + 0.5 + shift + rng.normal(0, 0.008, size=points.shape)
        points[:, 0] += slant * (0.5 - points[:, 1])  # a forward slant: the top leans right
        strokes.append([(x + px * width, y + py * height) for px, py in points])
    return strokes


def person_drawing(label: int, rng: np.random.Generator, size: int = 280, pen: int = 22) -> Image.Image:
    """One digit of the person's, drawn on the drawing page's canvas (black on white, the page's round pen)."""
    from PIL import ImageDraw

    canvas = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(canvas)
    for stroke in person_strokes(label, rng, (0.3 * size, 0.15 * size, 0.4 * size, 0.7 * size)):
        for px, py in stroke:
            draw.ellipse((px - pen / 2, py - pen / 2, px + pen / 2, py + pen / 2), fill="black")
        draw.line(stroke, fill="black", width=pen)
    return canvas


def person_sheet(rng: np.random.Generator, labels=range(10), cell: int = 120, pen: int = 10) -> Image.Image:
    """A calibration sheet: the person writes `labels` in a row, one per cell, on white paper."""
    from PIL import ImageDraw

    labels = list(labels)
    canvas = Image.new("L", (cell * len(labels) + cell // 2, int(cell * 1.8)), 255)
    draw = ImageDraw.Draw(canvas)
    for index, label in enumerate(labels):
        box = (cell // 4 + index * cell + 0.2 * cell, 0.3 * cell, 0.55 * cell, 1.2 * cell)
        for stroke in person_strokes(label, rng, box):
            draw.line(stroke, fill=int(255 * INK), width=pen, joint="curve")
    return canvas
