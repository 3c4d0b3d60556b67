"""Tests of stages/reading (paper, ink, numbers) on photos and scans of paper, and on whole numbers.

Two oracles, neither of them the reader: the MNIST digit each image was made from (tests/helpers/framing.py: the
framed 28x28 input must be that digit again), and the model on the original digits: each digit of mnist-10k,
rendered the way people capture handwriting (benchmarks/photo_forms.py), must be classified about as well as
the original 28x28 array. The model is the session's small LeNet (conftest.py). `pytest tests/test_images.py -s -k
"forms or numbers"` prints the accuracy per form and the exact-number accuracy (IMAGES_FORM_DIGITS=<n> for another
digit count than 200).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers.framing import assert_frames_like, frame_correlation
from PIL import Image
from scipy import ndimage

from benchmarks.photo_forms import FORMS, as_photo, marker, ruled, shadowed, written_number
from stages.core.datasets import class_names
from stages.preprocess import normalize
from stages.reading.ink import Ink, find_ink
from stages.reading.loading import ImageError
from stages.reading.numbers import NO_DIGITS, model_input, split_number
from stages.reading.reader import Reader

FORM_DIGITS = int(os.environ.get("IMAGES_FORM_DIGITS", "200"))
MAX_ACCURACY_LOSS = 0.02
NUMBERS = 50


def predict_arrays(model, arrays) -> np.ndarray:
    """The model's own (uncalibrated) probabilities, through the one reader."""
    return Reader(model, class_names("mnist"), "mnist", "the session's model").probabilities(list(arrays))


def page(height: int = 300, width: int = 400, paper: float = 0.9) -> np.ndarray:
    return np.full((height, width), paper, dtype=np.float32)


def bar(array: np.ndarray, top: int, left: int, height: int, width: int, lightness: float = 0.1) -> None:
    array[top:top + height, left:left + width] = lightness


def assert_just_the_bar(ink: Ink, height: int, width: int) -> None:
    """The ink is cropped to the bar, its blurred edge and a 2-pixel rim: nothing else on the page was kept."""
    assert height + 2 <= ink.strength.shape[0] <= height + 6 and width + 2 <= ink.strength.shape[1] <= width + 6


# --- finding the ink --------------------------------------------------------------------------------------------

def test_grey_paper_under_a_lighting_gradient_goes_to_zero():
    lightness = page() * np.linspace(1.0, 0.55, 400, dtype=np.float32)  # lamp on the left
    bar(lightness, 100, 300, 100, 12, lightness=0.08)  # a 1 in the dark half
    ink = find_ink(as_photo(lightness, "PNG"))
    assert_just_the_bar(ink, 100, 12)
    assert ink.strength.max() == 1 and ink.strength[:, :2].max() < 0.1


def test_a_speck_far_from_the_digit_is_ignored():
    lightness = page()
    bar(lightness, 100, 100, 80, 10)
    bar(lightness, 10, 380, 6, 6)  # dirt in the corner
    assert_just_the_bar(find_ink(as_photo(lightness, "PNG")), 80, 10)


def test_rules_of_notebook_paper_are_erased_but_the_digit_crossing_them_is_not():
    lightness = page()
    ruled(lightness, np.random.default_rng(0), spacing=40, vertical=True, lightness=0.6)
    bar(lightness, 95, 200, 110, 10)
    ink = find_ink(as_photo(lightness, "PNG"))
    assert_just_the_bar(ink, 110, 10)
    # Where the bar crosses a rule its pixels stay ink: the bar is one mark, top to bottom.
    middle = ink.strength.shape[1] // 2
    assert len(ink.marks) == 1 and (ink.strength[4:-4, middle - 2:middle + 2] > 0.5).all()


def test_one_long_stroke_is_not_a_rule():
    lightness = page()
    bar(lightness, 20, 100, 260, 10)  # a tall 1, as long as the page
    assert_just_the_bar(find_ink(as_photo(lightness, "PNG")), 260, 10)


@pytest.mark.parametrize("lightness", [
    pytest.param(page() + np.random.default_rng(0).normal(0, 0.05, (300, 400)).astype(np.float32), id="grainy-paper"),
    pytest.param(page() * np.linspace(1.0, 0.5, 400, dtype=np.float32), id="gradient"),
    pytest.param(np.pad(page(200, 300), 50, constant_values=0.3), id="dark-margin-round-the-paper"),
])
def test_blank_pages_are_refused(lightness):
    with pytest.raises(ImageError, match="blank image"):
        print(find_ink(as_photo(lightness, "PNG")).strength.shape)


@pytest.mark.parametrize("size", [48, 200])
def test_pages_of_noise_are_refused(size):
    rng = np.random.default_rng(0)
    for noise in (rng.uniform(0, 1, (size, size)), np.clip(rng.normal(0.5, 0.12, (size, size)), 0, 1)):
        with pytest.raises(ImageError, match="blank image"):
            find_ink(as_photo(noise.astype(np.float32), "PNG"))


# --- digits that fill their picture --------------------------------------------------------------------------

def cropped(digit: np.ndarray, size: int, kind: str) -> Image.Image:
    """A digit cropped to its ink ("tight"), also cut through its top ("cut"), or with a margin ("margin"), scaled
    so its long side is `size`, dark on white."""
    rows, columns = np.nonzero(digit)
    crop = digit[rows.min():rows.max() + 1, columns.min():columns.max() + 1]
    if kind == "margin":
        crop = np.pad(crop, max(crop.shape) // 4 + 1)
    scale = size / max(crop.shape)
    shape = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    array = np.asarray(Image.fromarray(crop).resize(shape, Image.Resampling.BICUBIC))
    if kind == "cut":
        array = array[max(1, round(0.1 * array.shape[0])):]
    return Image.fromarray(255 - array)


@pytest.mark.parametrize("size", [48, 160])
def test_digits_touching_the_edges_are_read(size, model, test_digits, test_labels):
    """Tight crops used to be refused as blank (their border, taken for the paper, is partly ink)."""
    count = 100
    accuracy = {}
    for kind in ("margin", "tight", "cut"):
        arrays = [model_input(cropped(digit, size, kind), "mnist") for digit in test_digits[:count]]
        accuracy[kind] = float(np.mean(predict_arrays(model, arrays).argmax(axis=1) == test_labels[:count]))
    print(f"\n{size} px: {accuracy}")
    assert accuracy["tight"] >= accuracy["margin"] - 0.02
    assert accuracy["cut"] >= accuracy["margin"] - 0.08  # a tenth of the digit is gone


# --- numbers ----------------------------------------------------------------------------------------------------

def test_a_digit_in_two_strokes_stays_one_digit():
    lightness = page()
    bar(lightness, 100, 100, 8, 50)  # a 5's flag, not touching its body
    bar(lightness, 112, 100, 40, 8)
    bar(lightness, 150, 100, 8, 45)
    bar(lightness, 150, 140, 50, 8)
    bar(lightness, 100, 220, 100, 10)  # then a 1
    digits = split_number(as_photo(lightness, "PNG"), "mnist")
    # Boxes hold the strokes' blurred edge: a pixel more each side.
    assert len(digits) == 2
    for digit, expected in zip(digits, [(100, 100, 50, 100), (220, 100, 10, 100)], strict=True):
        assert np.abs(np.subtract(digit.box, expected)).max() <= 2
    assert all(digit.array.shape == (28, 28, 1) for digit in digits)


def test_a_broken_off_piece_joins_the_digit_beside_it():
    lightness = page()
    bar(lightness, 100, 100, 100, 10)  # a 1 ...
    bar(lightness, 182, 116, 8, 16)  # ... whose foot broke off, beside it
    bar(lightness, 100, 180, 100, 25)  # and another digit further right
    digits = split_number(as_photo(lightness, "PNG"), "mnist")
    assert len(digits) == 2 and digits[0].box[0] + digits[0].box[2] >= 131


def test_boxes_are_in_the_original_image_pixels():
    lightness = page(1500, 2000)
    bar(lightness, 600, 400, 300, 40)
    bar(lightness, 600, 800, 300, 40)
    boxes = [digit.box for digit in split_number(as_photo(lightness, "PNG"), "mnist")]
    assert len(boxes) == 2
    # Found at half size (the working size is 1024), so the blurred edge is two pixels a side here.
    for box, expected in zip(boxes, [(400, 600, 40, 300), (800, 600, 40, 300)], strict=True):
        assert np.abs(np.subtract(box, expected)).max() <= 6


def overlap(first: tuple, second: tuple) -> float:
    """Intersection over union of two (x, y, width, height) boxes."""
    width = min(first[0] + first[2], second[0] + second[2]) - max(first[0], second[0])
    height = min(first[1] + first[3], second[1] + second[3]) - max(first[1], second[1])
    common = max(0, width) * max(0, height)
    return common / (first[2] * first[3] + second[2] * second[3] - common)


# --- the oracle: each framed input against the MNIST digit it was made from -------------------------------------

def original(digit: np.ndarray) -> np.ndarray:
    return normalize(digit[np.newaxis])[0]


@pytest.mark.parametrize(("kind", "corner"), [("wedge", 0), ("wedge", 2), ("band", 1), ("blob", 3)])
def test_a_digit_under_a_hard_edged_shadow_frames_the_digit(kind, corner, test_digits):
    """A phone photo with a shadow over a corner or a side: the reader used to frame the shadow, not the digit."""
    rng = np.random.default_rng(corner)
    for digit in test_digits[:3]:
        # Read back from a photo, a digit correlates with its original at 0.8 or more (a bold one is thinned), at
        # 0.1-0.2 when the shadow is framed instead.
        assert_frames_like(model_input(shadowed(digit, rng, 0.6, kind, corner), "mnist"), original(digit), 0.8)


def mean_stroke_width(array: np.ndarray) -> float:
    """The strokes' mean width in pixels, measured apart from the reader: their area over their skeleton's length."""
    from skimage.morphology import skeletonize

    ink = np.asarray(array).reshape(28, 28) > 0.5
    return float(ink.sum() / max(1, skeletonize(ink).sum()))


def test_a_thick_marker_digit_is_framed_with_mnist_strokes(test_digits):
    """Strokes a fifth of the digit's height, cropped tight: framed, they are as wide as MNIST's own."""
    widths = [mean_stroke_width(digit / 255) for digit in test_digits[:300]]
    rng = np.random.default_rng(0)
    framed_widths = []
    for digit in test_digits[:12]:
        framed = model_input(marker(digit, rng, share=0.2), "mnist")
        framed_widths.append(mean_stroke_width(framed))
        assert_frames_like(framed, original(digit), min_correlation=0.75, blur=1.0)  # its shape, other strokes
    low, high = np.percentile(widths, [1, 99])
    assert low <= min(framed_widths) <= max(framed_widths) <= high, (low, framed_widths, high)


def ink_pieces(photo: Image.Image) -> int:
    """How many separate pieces of ink a rendered photo has (4 pixels or more), counted without the reader."""
    pieces, count = ndimage.label(np.asarray(photo.convert("L")) < 128, structure=np.ones((3, 3)))
    return int((np.bincount(pieces.ravel())[1:] >= 4).sum())


def test_touching_digits_are_split_into_two(test_digits):
    """Pairs of digits whose ink touches (rendered so, checked without the reader): most are cut where they meet,
    each half framed like its own digit, and each says its split was not sure."""
    rng = np.random.default_rng(0)
    split = 0
    for first in range(0, 20, 2):
        pair = [test_digits[first], test_digits[first + 1]]
        photo, _ = written_number(pair, rng, touching=1.0)
        assert ink_pieces(photo) == 1, "the digits were rendered apart"
        digits = split_number(photo, "mnist")
        if len(digits) == 2 and all(frame_correlation(digit.array, original(drawn)) >= 0.75
                                    for digit, drawn in zip(digits, pair, strict=True)):
            split += 1
            assert all(digit.split < 1 for digit in digits)
    # About 70% (42 of 60 pairs of mnist-10k's held-out digits): two narrow digits touching (a 1 and a 7) are as
    # wide as one digit, and no cut is looked for; a cut through ink shared by both leaves a piece of one in the other.
    assert split >= 6, f"{split} of 10 touching pairs read as their two digits"


def test_fives_written_apart_are_two_digits_each(test_digits, test_labels):
    """Each held-out 5 of the first 600 written twice, apart (rendered so: paper between the two inks), three ways:
    two digits, each framed like its original and not said cut. A wide 5 has a path through little ink from top
    to bottom; a cut there leaves a piece that is no digit. On 2edf526 15 of 162 were cut (a 5 read as 57);
    one 5 whose flag is left apart is read as three digits still."""
    wrong = []
    for index in np.flatnonzero(test_labels[:600] == 5):
        for seed in range(3):
            photo, _ = written_number([test_digits[index]] * 2, np.random.default_rng(seed))
            digits = split_number(photo, "mnist")
            if len(digits) != 2 or any(digit.split < 1 or frame_correlation(digit.array, original(
                    test_digits[index])) < 0.7 for digit in digits):
                wrong.append((int(index), seed))
    assert len(wrong) <= 1, wrong


def test_a_decimal_point_and_a_space_are_separators(test_digits):
    """3.14 5 (a point, then a space): the point is no digit, and both show in the number."""
    lightness = page(300, 900)
    left = 60
    for index, gap in enumerate((0, 44, 12, 110)):
        coverage = enlarged_ink(test_digits[index])
        left += gap
        lightness[100:100 + coverage.shape[0], left:left + coverage.shape[1]] -= 0.8 * coverage
        if index == 1:
            point = left - 28  # a point low in the gap before the second digit
            lightness[100 + coverage.shape[0] - 12:100 + coverage.shape[0], point:point + 12] = 0.1
        left += coverage.shape[1]
    noise = np.random.default_rng(0).normal(0, 0.01, lightness.shape).astype(np.float32)
    digits = split_number(as_photo(lightness + noise, "PNG"), "mnist")
    assert [digit.before for digit in digits] == ["", ".", "", " "]
    for digit, drawn in zip(digits, test_digits[:4], strict=True):
        assert_frames_like(digit.array, original(drawn), 0.8)


def enlarged_ink(digit: np.ndarray, height: int = 100) -> np.ndarray:
    """The digit's ink coverage drawn `height` pixels tall, cropped to the ink."""
    coverage = np.asarray(Image.fromarray(digit).resize((height, height), Image.Resampling.BICUBIC), np.float32) / 255
    rows, columns = np.nonzero(coverage > 0.05)
    return coverage[rows.min():rows.max() + 1, columns.min():columns.max() + 1]


def test_a_page_of_specks_has_no_digits():
    specks = page()
    for row, column in np.random.default_rng(0).integers(10, 290, (30, 2)):
        specks[row:row + 3, column:column + 3] = 0.1
    with pytest.raises(ImageError, match=NO_DIGITS):
        split_number(as_photo(specks, "PNG"), "mnist")


@pytest.mark.parametrize(("count", "seed"), [(100, 2), (200, 0), (400, 0)])
def test_a_page_of_many_specks_has_no_digits(count, seed):
    """The issue's case: 200 random 3x3 specks on white (30 pass, above). Specks in a column group as one digit's
    marks and two touching make a short dash: before a digit had to be a stroke, the 200 gave 45 "digits" and
    `predict --number` answered a number, exit 0. Of the 100, one chain of touching specks is as long as a short
    stroke: it holds a few percent of the page's ink, and a number's digits hold most of it."""
    specks = page(paper=1.0)
    rng = np.random.default_rng(seed)
    for row, column in zip(rng.integers(0, 297, count), rng.integers(0, 397, count), strict=True):
        specks[row:row + 3, column:column + 3] = 0.0
    with pytest.raises(ImageError, match=NO_DIGITS):
        split_number(as_photo(specks, "PNG"), "mnist")


# --- real digits, rendered: accuracy against the originals -----------------------------------------------------

@pytest.fixture(scope="session")
def clean_accuracy(model, test_digits, test_labels) -> float:
    """The model's accuracy on the original 28x28 arrays of the digits every form renders."""
    arrays = list(normalize(test_digits[:FORM_DIGITS]))
    return float(np.mean(predict_arrays(model, arrays).argmax(axis=1) == test_labels[:FORM_DIGITS]))


@pytest.mark.parametrize("form", list(FORMS))
def test_forms_of_paper_keep_the_accuracy(form, model, test_digits, test_labels, clean_accuracy):
    rng = np.random.default_rng(0)
    arrays = [model_input(FORMS[form](digit, rng), "mnist") for digit in test_digits[:FORM_DIGITS]]
    accuracy = float(np.mean(predict_arrays(model, arrays).argmax(axis=1) == test_labels[:FORM_DIGITS]))
    print(f"\naccuracy {form:20s} {accuracy:6.1%} (originals {clean_accuracy:.1%}) on {FORM_DIGITS} digits")
    assert accuracy >= clean_accuracy - MAX_ACCURACY_LOSS


def test_written_numbers_are_read_digit_by_digit(model, test_digits, test_labels, clean_accuracy):
    rng = np.random.default_rng(1)
    exact, expected, found = 0, [], 0
    for _ in range(NUMBERS):
        length = int(rng.integers(2, 7))
        chosen = rng.choice(FORM_DIGITS, size=length, replace=False)
        photo, boxes = written_number(list(test_digits[chosen]), rng)
        digits = split_number(photo, "mnist")
        found += len(digits) == length
        if len(digits) == length:
            read = predict_arrays(model, [digit.array for digit in digits]).argmax(axis=1)
            exact += bool(np.array_equal(read, test_labels[chosen]))
            # Faint ends of a stroke may fall outside the box found; the box is still the digit's.
            assert all(overlap(digit.box, box) > 0.7 for digit, box in zip(digits, boxes, strict=True))
        expected.append(clean_accuracy ** length)
    bound = 0.9 * float(np.mean(expected))
    print(f"\nnumbers: {exact}/{NUMBERS} read exactly ({exact / NUMBERS:.0%}); split right {found}/{NUMBERS}; "
          f"digit accuracy {clean_accuracy:.1%} predicts {np.mean(expected):.0%}, bound {bound:.0%}")
    assert exact / NUMBERS >= bound


def test_save_a_rendered_form(tmp_path, test_digits):
    """Every form renders a decodable image with the digit in it (a quick check that needs no model)."""
    rng = np.random.default_rng(0)
    for form, render in FORMS.items():
        image = render(test_digits[0], rng)
        assert isinstance(image, Image.Image) and min(image.size) >= 28, form
        assert model_input(image, "mnist").max() == 1
