"""Real MNIST test digits rendered the ways people capture handwriting: photos and scans of paper, whole numbers.
The benchmark's photo forms (benchmarks/photos.py) and the reader's tests (tests/test_images.py and others) render
with it; the product never does, so it lives here, not in stages/.

Every form starts from a digit of mnist-10k (white on black, 28x28), enlarged and laid on a page with Pillow and
NumPy; what the form adds (grey grainy paper, a lighting gradient, a shadow, faint pencil, a thick marker, a small
digit on a large page, a few degrees of rotation, ruled or squared paper, a hard-edged shadow over part of a phone
photo, coloured ink, digits that touch) is the only difference from the original.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

INK = 0.12  # lightness of pen ink on white paper


def enlarged(digit: np.ndarray, height: int) -> np.ndarray:
    """Ink coverage in [0, 1] of the 28x28 digit drawn `height` pixels tall (28 -> height, bicubic)."""
    size = max(28, round(height))
    image = Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(image, dtype=np.float32) / 255, 0, 1)


def paste_ink(page: np.ndarray, coverage: np.ndarray, top: int, left: int, ink: float | np.ndarray = INK) -> None:
    """Lay ink on the page (lightness), in place: each pixel mixes paper and ink by the coverage."""
    height, width = coverage.shape
    region = page[top:top + height, left:left + width]
    region[...] = region * (1 - coverage) + ink * coverage


def grain(rng: np.random.Generator, shape: tuple[int, int], sigma: float, blotches: float = 0.0) -> np.ndarray:
    """Paper texture: pixel noise plus, optionally, soft blotches a few percent of the page wide."""
    noise = rng.normal(0, sigma, shape).astype(np.float32)
    if blotches:
        coarse = rng.normal(0, 1, (max(2, shape[0] // 16), max(2, shape[1] // 16))).astype(np.float32)
        smooth = Image.fromarray(coarse, mode="F").resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
        noise += blotches * np.asarray(smooth, dtype=np.float32)
    return noise


def as_photo(page: np.ndarray, format: str = "JPEG", quality: int = 85) -> Image.Image:
    """The page lightness as a decoded 8-bit file, the way the reader sees it."""
    image = Image.fromarray(np.round(np.clip(page, 0, 1) * 255).astype(np.uint8), mode="L")
    buffer = io.BytesIO()
    image.save(buffer, format=format, **({"quality": quality} if format == "JPEG" else {}))
    buffer.seek(0)
    return Image.open(buffer)


def digit_on_page(digit, rng, *, size=(480, 360), height=120, paper=0.93, ink=INK, place="centre") -> np.ndarray:
    page = np.full((size[1], size[0]), paper, dtype=np.float32)
    coverage = enlarged(digit, height)
    if place == "centre":
        top, left = (size[1] - coverage.shape[0]) // 2, (size[0] - coverage.shape[1]) // 2
    else:
        top = int(rng.integers(0, size[1] - coverage.shape[0]))
        left = int(rng.integers(0, size[0] - coverage.shape[1]))
    paste_ink(page, coverage, top, left, ink)
    return page


def grey_noisy_paper(digit, rng):
    page = digit_on_page(digit, rng, paper=float(rng.uniform(0.55, 0.75)), ink=0.08, place="random")
    return as_photo(page + grain(rng, page.shape, 0.05, blotches=0.04), quality=75)


def lighting_gradient(digit, rng):
    page = digit_on_page(digit, rng, place="random")
    rows, columns = np.indices(page.shape, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    along = (np.cos(angle) * columns + np.sin(angle) * rows) / max(page.shape)
    light = 1 - 0.45 * (along - along.min()) / (along.max() - along.min())  # full light to 55% across the page
    return as_photo(page * light + grain(rng, page.shape, 0.015))


def shadow(digit, rng):
    page = digit_on_page(digit, rng)
    rows, columns = np.indices(page.shape, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    # A soft-edged shadow (a hand, a phone) whose edge runs near the digit's centre.
    side = np.cos(angle) * (columns - page.shape[1] / 2) + np.sin(angle) * (rows - page.shape[0] / 2)
    side += rng.uniform(-30, 30)
    darkness = 0.4 / (1 + np.exp(-side / 12))
    return as_photo(page * (1 - darkness) + grain(rng, page.shape, 0.015))


def faint_pencil(digit, rng):
    page = digit_on_page(digit, rng, ink=float(rng.uniform(0.65, 0.75)), place="random")
    return as_photo(page + grain(rng, page.shape, 0.02), quality=90)


def thick_marker(digit, rng):
    # Strokes half again as wide as the digit's own (about 12 pixels at this size): spread by a 7x7 maximum.
    page = np.full((360, 480), 0.93, dtype=np.float32)
    coverage = np.asarray(Image.fromarray(enlarged(digit, 120), mode="F").filter(ImageFilter.MaxFilter(7)))
    paste_ink(page, coverage, 120, 180, ink=0.02)
    return as_photo(page + grain(rng, page.shape, 0.01))


def marker_coverage(digit: np.ndarray, height: int, share: float) -> np.ndarray:
    """Ink coverage of the digit redrawn with a round marker `share` of its height wide, `height` pixels tall: the
    digit's skeleton (at 4x) widened by the marker's radius, cropped to its ink."""
    from scipy import ndimage
    from skimage.morphology import skeletonize

    skeleton = skeletonize(enlarged(digit, 4 * 28) > 0.5)
    rows = np.flatnonzero(skeleton.any(axis=1))
    radius = share * (rows[-1] - rows[0] + 1) / (2 * (1 - share))  # the widened digit is `share` of its height
    skeleton = np.pad(skeleton, int(np.ceil(radius)) + 2)
    coverage = np.clip(radius + 0.5 - ndimage.distance_transform_edt(~skeleton), 0, 1).astype(np.float32)
    top, left, bottom, right = ink_box(coverage, 0.5)
    coverage = coverage[top:bottom, left:right]
    size = (max(1, round(coverage.shape[1] * height / coverage.shape[0])), height)
    return np.clip(np.asarray(Image.fromarray(coverage, mode="F").resize(size, Image.Resampling.BOX)), 0, 1)


def marker(digit, rng, share: float = 0.2, tight: bool = True):
    """A thick marker digit, its strokes `share` of its height: cropped to the ink (0-2 pixels of paper), or on a
    page."""
    coverage = marker_coverage(digit, int(rng.integers(90, 160)) if tight else 120, share)
    if tight:
        margin = int(rng.integers(0, 3))
        page = np.full((coverage.shape[0] + 2 * margin, coverage.shape[1] + 2 * margin), 0.92, np.float32)
        top, left = margin, margin
    else:
        page = np.full((360, 480), 0.93, dtype=np.float32)
        top = int(rng.integers(20, 340 - coverage.shape[0]))
        left = int(rng.integers(20, 460 - coverage.shape[1]))
    paste_ink(page, coverage, top, left, ink=0.05)
    return as_photo(page + grain(rng, page.shape, 0.01))


def shadow_mask(shape: tuple[int, int], rng: np.random.Generator, kind: str, corner: int) -> np.ndarray:
    """How much of a hard-edged shadow (0-1) each pixel is under: a "wedge" cut off a corner (0-3, clockwise from
    the top left) by a straight edge, a "band" along one side, or an elliptical "blob" over the corner."""
    height, width = shape
    rows, columns = np.indices(shape, dtype=np.float32)
    if corner in (1, 2):
        columns = width - 1 - columns
    if corner in (2, 3):
        rows = height - 1 - rows
    if kind == "wedge":
        across, down = rng.uniform(0.3, 0.8) * width, rng.uniform(0.3, 0.8) * height
        inside = (1 - columns / across - rows / down) * min(across, down)
    elif kind == "band":
        tilt = rng.normal(0, 0.1)
        inside = (rng.uniform(0.15, 0.35) * width - columns + tilt * rows if rng.random() < 0.5
                  else rng.uniform(0.15, 0.35) * height - rows + tilt * columns)
    else:
        centre = rng.uniform(-0.1, 0.15, 2) * (width, height)
        radii = rng.uniform(0.3, 0.55, 2) * (width, height)
        inside = (1 - np.hypot((columns - centre[0]) / radii[0], (rows - centre[1]) / radii[1])) * radii.min()
    # An edge 1-3 pixels soft: the shadow of a hand or a phone close to the page.
    return 1 / (1 + np.exp(-np.clip(inside / rng.uniform(0.7, 2.5), -50, 50)))


def shadowed(digit, rng, strength: float = 0.5, kind: str = "wedge", corner: int | None = None):
    """A phone photo of a page (1200x900) with a small digit near the middle and a hard-edged shadow taking
    `strength` of the light over a corner or a side."""
    corner = int(rng.integers(0, 4)) if corner is None else corner
    page = np.full((900, 1200), 0.92, dtype=np.float32)
    coverage = enlarged(digit, int(rng.integers(60, 100)))
    top = (900 - coverage.shape[0]) // 2 + int(rng.integers(-40, 40))
    left = (1200 - coverage.shape[1]) // 2 + int(rng.integers(-40, 40))
    paste_ink(page, coverage, top, left)
    light = 1 - strength * shadow_mask(page.shape, rng, kind, corner)
    return as_photo(page * light + grain(rng, page.shape, 0.015))


# Pen colours (RGB) and what their lightness is on white: blue and green are darker than their colour suggests.
PEN_COLOURS = {"blue": (0.1, 0.2, 0.75), "red": (0.8, 0.1, 0.15), "green": (0.1, 0.5, 0.2), "purple": (0.45, 0.15, 0.6)}


def coloured(digit, rng, colour: str | None = None):
    """The digit in a coloured pen on cream paper, an RGB JPEG."""
    colour = list(PEN_COLOURS)[int(rng.integers(0, len(PEN_COLOURS)))] if colour is None else colour
    page = np.ones((360, 480, 3), dtype=np.float32) * np.array([0.95, 0.93, 0.86]) * rng.uniform(0.85, 1.0)
    coverage = enlarged(digit, 120)[..., np.newaxis]
    top, left = int(rng.integers(0, 240)), int(rng.integers(0, 360))
    region = page[top:top + 120, left:left + 120]
    region[...] = region * (1 - coverage) + np.array(PEN_COLOURS[colour]) * coverage
    image = Image.fromarray(np.round(np.clip(page + rng.normal(0, 0.015, page.shape), 0, 1) * 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    buffer.seek(0)
    return Image.open(buffer)


def small_on_large_page(digit, rng):
    page = digit_on_page(digit, rng, size=(1600, 1200), height=int(rng.integers(60, 90)), place="random")
    return as_photo(page + grain(rng, page.shape, 0.02))


def rotated(digit, rng):
    page = digit_on_page(digit, rng)
    image = Image.fromarray(np.round(page * 255).astype(np.uint8), mode="L")
    turned = image.rotate(float(rng.choice([-1, 1]) * rng.uniform(3, 6)), Image.Resampling.BICUBIC, fillcolor=237)
    return as_photo(np.asarray(turned, dtype=np.float32) / 255 + grain(rng, page.shape, 0.015))


def ruled(page: np.ndarray, rng: np.random.Generator, spacing: float, vertical: bool, lightness: float) -> None:
    """Draw notebook rules, 2 pixels wide, every `spacing` pixels, in place."""
    offset = rng.uniform(0, spacing)
    for position in np.arange(offset, page.shape[0], spacing).astype(int):
        page[position:position + 2] = np.minimum(page[position:position + 2], lightness)
    if vertical:
        for position in np.arange(offset, page.shape[1], spacing).astype(int):
            page[:, position:position + 2] = np.minimum(page[:, position:position + 2], lightness)


def on_rules(digit, rng, vertical: bool):
    page = np.full((360, 480), 0.93, dtype=np.float32)
    height = 120
    ruled(page, rng, spacing=height * (0.33 if vertical else 0.6), vertical=vertical, lightness=0.62)
    coverage = enlarged(digit, height)
    top = int(rng.integers(0, 360 - height))
    left = int(rng.integers(0, 480 - height))
    paste_ink(page, coverage, top, left)
    return as_photo(page + grain(rng, page.shape, 0.015))


# form -> renderer(digit, rng) returning the decoded image
FORMS = {
    "grey_noisy_paper": grey_noisy_paper,
    "lighting_gradient": lighting_gradient,
    "shadow": shadow,
    "faint_pencil": faint_pencil,
    "thick_marker": thick_marker,
    "small_on_large_page": small_on_large_page,
    "rotated": rotated,
    "ruled_paper": lambda digit, rng: on_rules(digit, rng, vertical=False),
    "squared_paper": lambda digit, rng: on_rules(digit, rng, vertical=True),
    "marker_tight": marker,
    "shadow_wedge": shadowed,
    "coloured_ink": coloured,
}


# --- numbers ----------------------------------------------------------------------------------------------------

def ink_box(coverage: np.ndarray, threshold: float = 0.05) -> tuple[int, int, int, int]:
    inked = coverage > threshold
    rows, columns = np.flatnonzero(inked.any(axis=1)), np.flatnonzero(inked.any(axis=0))
    return int(rows[0]), int(columns[0]), int(rows[-1]) + 1, int(columns[-1]) + 1


def written_number(digits: list[np.ndarray], rng: np.random.Generator,
                   touching: float = 0.0) -> tuple[Image.Image, list[tuple]]:
    """Digits written side by side on paper: unequal heights, a wavy baseline, spacing from slight box overlap to a
    gap. With probability `touching` a digit's ink touches the one before (their cores meet and overlap by 1-3
    pixels, or a short joining stroke meets both), else a pixel of paper at least stays between them. Returns the
    photo and each digit's ink box (x, y, width, height)."""
    height = 90
    pieces = []
    for digit in digits:
        coverage = enlarged(digit, height * rng.uniform(0.8, 1.2))
        top, left, bottom, right = ink_box(coverage)
        pieces.append(coverage[top:bottom, left:right])
    width = sum(piece.shape[1] for piece in pieces) + 60 * len(pieces) + 120
    canvas = np.zeros((int(height * 1.6) + 80, width), dtype=np.float32)
    boxes, x = [], 60
    for piece in pieces:
        y = int(canvas.shape[0] / 2 - piece.shape[0] / 2 + rng.uniform(-8, 8))
        if boxes and rng.random() < touching:
            # Move left from a gap until the strokes' cores meet, then 1-3 pixels further; where they do not meet
            # before the boxes overlap by a tenth, a joining stroke (a ligature) makes them touch.
            start, furthest = x + 5, x - min(piece.shape[1], boxes[-1][2]) // 10
            while start > furthest and apart(canvas, piece, y, start, grow=1, level=0.5):
                start -= 1
            start -= int(rng.integers(1, 4))
            if apart(canvas, piece, y, start, grow=1, level=0.5):
                ligature(canvas, piece, y, start)
        else:
            gap = int(round(rng.uniform(-0.15, 0.35) * height * 0.6))
            start = max(60, x + gap) if boxes else x
            # Move right until the new ink keeps one pixel of paper from the ink already laid (8-neighbourhood).
            while not apart(canvas, piece, y, start, grow=5):
                start += 1
        canvas[y:y + piece.shape[0], start:start + piece.shape[1]] = np.maximum(
            canvas[y:y + piece.shape[0], start:start + piece.shape[1]], piece)
        boxes.append((start, y, piece.shape[1], piece.shape[0]))
        x = max(x, start + piece.shape[1])
    page = 0.93 * (1 - canvas) + INK * canvas
    return as_photo(page + grain(rng, page.shape, 0.015)), boxes


def ligature(canvas: np.ndarray, piece: np.ndarray, y: int, x: int) -> None:
    """A short horizontal stroke from the canvas's ink to the piece's (laid at y, x), where they are closest."""
    best = None
    for row in range(piece.shape[0]):
        ink = np.flatnonzero(piece[row] > 0.5)
        laid = np.flatnonzero(canvas[y + row, :x + piece.shape[1]] > 0.5)
        if ink.size and laid.size and laid[laid < x + ink[0]].size:
            gap = x + ink[0] - laid[laid < x + ink[0]][-1]
            if best is None or gap < best[0]:
                best = (gap, row, laid[laid < x + ink[0]][-1], x + ink[0])
    if best is not None:
        _, row, start, end = best
        thickness = max(2, round(piece.shape[0] / 12))
        canvas[y + row - thickness // 2:y + row + thickness - thickness // 2, start:end + 1] = 1.0


def apart(canvas: np.ndarray, piece: np.ndarray, y: int, x: int, grow: int, level: float = 0.05) -> bool:
    """Whether the piece's ink, laid at (y, x), stays clear of the canvas's ink grown by a `grow`-pixel square (ink:
    coverage above `level`)."""
    grown = np.asarray(Image.fromarray(canvas).filter(ImageFilter.MaxFilter(grow))) if grow > 1 else canvas
    return not ((grown[y:y + piece.shape[0], x:x + piece.shape[1]] > level) & (piece > level)).any()
