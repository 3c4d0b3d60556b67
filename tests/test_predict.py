"""Tests of stages.predict.

The oracle for preprocessing is MNIST itself: its digits were made by the procedure predict.py re-implements, so a
real test digit, saved the ways a user would save a drawing (black on white, coloured, transparent, ten times
larger, somewhere on a big canvas, JPEG...), must come back as (nearly) the same 28x28 array, and a model must
classify it as it classifies the original. The model is a LeNet trained once per session on the 8,000 training
digits of the shipped mnist-10k sample (stages/mnist_10k).

`pytest tests/test_predict.py -k agreement -s` prints the agreement rate per form on the first 200 test digits
(PREDICT_AGREEMENT_DIGITS=<n> for another count). Why 200 and not 100: the disagreements are digits the small model
is unsure of on the original too (most of them it got wrong there); the first 100 hold more of those than the
average, so 100 digits put some forms at exactly 95%, while 1,000 digits give 98-99% on every form.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.params import write_params
from helpers.project import ROOT
from PIL import Image

from stages import predict
from stages.core.datasets import class_names
from stages.preprocess import normalize
from stages.reading import framing, loading, numbers
from stages.reading.reader import Reader, prepare_files

AGREEMENT_DIGITS = int(os.environ.get("PREDICT_AGREEMENT_DIGITS", "200"))
MIN_AGREEMENT = 0.95
PAPER, BLUE_INK = (246, 240, 222), (25, 35, 120)


# --- rendering MNIST digits the ways users save their drawings -------------------------------------------------

def on_paper(digit: np.ndarray, paper=(255, 255, 255), ink=(0, 0, 0)) -> Image.Image:
    """An MNIST digit (white on black) drawn with `ink` on `paper`, each pixel mixed by the digit's intensity."""
    coverage = digit.astype(np.float32)[..., np.newaxis] / 255
    mixed = np.asarray(paper, np.float32) * (1 - coverage) + np.asarray(ink, np.float32) * coverage
    return Image.fromarray(np.round(mixed).astype(np.uint8), mode="RGB")


def enlarged(digit: np.ndarray, factor: int) -> Image.Image:
    return on_paper(digit).convert("L").resize((28 * factor, 28 * factor), Image.Resampling.BICUBIC)


def off_centre(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    canvas = Image.new("L", (640, 480), 255)
    canvas.paste(enlarged(digit, 3), (int(rng.integers(0, 640 - 84)), int(rng.integers(0, 480 - 84))))
    return canvas


def black_on_transparent(digit: np.ndarray) -> Image.Image:
    black = np.zeros_like(digit)
    return Image.fromarray(np.dstack([black, black, black, digit]), mode="RGBA")


# form -> (file suffix, Pillow save arguments, renderer(digit, rng))
FORMS = {
    "white_on_black": ("png", {}, lambda digit, rng: Image.fromarray(digit, mode="L")),
    "black_on_white": ("png", {}, lambda digit, rng: on_paper(digit).convert("L")),
    "rgb": ("png", {}, lambda digit, rng: on_paper(digit, PAPER, BLUE_INK)),
    "rgba_transparent": ("png", {}, lambda digit, rng: black_on_transparent(digit)),
    "large_10x": ("png", {}, lambda digit, rng: enlarged(digit, 10)),
    "off_centre": ("png", {}, off_centre),
    "jpeg": ("jpg", {"quality": 75}, lambda digit, rng: enlarged(digit, 10).convert("RGB")),
    "palette_gif": ("gif", {}, lambda digit, rng: on_paper(digit).convert("P")),
    "webp": ("webp", {"quality": 80}, lambda digit, rng: enlarged(digit, 5)),
}


def render_files(form: str, digits: np.ndarray, folder: Path) -> list[Path]:
    suffix, save_arguments, render = FORMS[form]
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, digit in enumerate(digits):
        path = folder / f"{index:03d}.{suffix}"
        render(digit, rng).save(path, **save_arguments)
        paths.append(path)
    return paths


@pytest.fixture
def digit_file(tmp_path, test_digits) -> Path:
    path = tmp_path / "digit.png"
    on_paper(test_digits[0]).save(path)
    return path


def as_input(digits: np.ndarray) -> np.ndarray:
    """uint8 digits as the model sees them, normalised as the preprocess stage does."""
    return normalize(digits)


def transparent_paper_gif(digit: np.ndarray) -> Image.Image:
    """A palette GIF whose paper colour is the transparent palette entry, as drawing tools export."""
    image = Image.fromarray(255 - digit).convert("P")
    return saved(image, "GIF", transparency=image.getpixel((0, 0)))


def saved(image: Image.Image, format: str = "PNG", **arguments) -> Image.Image:
    """The image as a reader sees it after saving in `format`."""
    buffer = io.BytesIO()
    image.save(buffer, format=format, **arguments)
    buffer.seek(0)
    return Image.open(buffer)


# --- preprocessing: pure helpers, no model ----------------------------------------------------------------------

def test_an_mnist_digit_comes_back_unchanged(test_digits):
    """MNIST's own procedure made these digits, so applying it again is (nearly) the identity."""
    digits = test_digits[:50]
    outputs = np.stack([numbers.model_input(Image.fromarray(digit), "mnist") for digit in digits])
    assert outputs.shape == (50, 28, 28, 1) and outputs.dtype == np.float32
    assert outputs.min() >= 0 and outputs.max() == 1
    # At most one pixel's worth of ink moves: the faintest rim pixels fall below the bounding-box threshold.
    differences = np.abs(outputs[..., 0] - digits / 255).sum(axis=(1, 2))
    assert differences.max() < 1


@pytest.mark.parametrize("image_of", [
    pytest.param(lambda d: Image.fromarray(255 - d), id="black-on-white"),
    pytest.param(lambda d: on_paper(d, PAPER, BLUE_INK), id="blue-on-cream-rgb"),
    pytest.param(lambda d: Image.fromarray((200 - 0.7 * d).astype(np.uint8)), id="grey-paper"),
    pytest.param(black_on_transparent, id="black-on-transparent"),
    pytest.param(lambda d: Image.fromarray(np.dstack([np.full_like(d, 255)] * 3 + [d])), id="white-on-transparent"),
    pytest.param(lambda d: Image.fromarray(np.dstack([np.zeros_like(d), d]), mode="LA"), id="gray-alpha"),
    pytest.param(lambda d: Image.fromarray(d.astype(np.uint16) * 257), id="16-bit"),
    pytest.param(lambda d: saved(on_paper(d).convert("CMYK"), "JPEG", quality=95), id="cmyk-jpeg"),
    pytest.param(transparent_paper_gif, id="gif-transparent-paper"),
])
def test_every_colour_scheme_gives_light_ink_on_black(test_digits, image_of):
    digit = test_digits[0]
    expected = numbers.model_input(Image.fromarray(digit), "mnist")
    output = numbers.model_input(image_of(digit), "mnist")
    # Grey paper rounds each pixel once more, which can tip the centre of mass by a pixel; JPEG adds its noise.
    assert min(np.abs(output - np.roll(expected, shift, axis=0)).max() for shift in (-1, 0, 1)) < 0.05


def test_transparent_margin_around_a_white_card_counts_as_paper(test_digits):
    """Colours with contrast mean the drawing is in the colours: transparency is shown on white, as viewers do."""
    digit = test_digits[1]
    card = np.zeros((60, 50, 4), dtype=np.uint8)
    card[16:44, 11:39, :3] = (255 - digit)[..., np.newaxis]
    card[16:44, 11:39, 3] = 255
    output = numbers.model_input(Image.fromarray(card, mode="RGBA"), "mnist")
    assert np.abs(output - numbers.model_input(Image.fromarray(digit), "mnist")).max() < 0.03


def test_exif_orientation_is_applied(tmp_path, test_digits):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    on_paper(test_digits[0]).rotate(90, expand=True).save(path, quality=95, exif=exif)
    output = numbers.model_input(loading.load_image(path), "mnist")
    assert np.abs(output - numbers.model_input(Image.fromarray(test_digits[0]), "mnist")).mean() < 0.01


def test_bounding_box_ignores_faint_noise():
    ink = np.zeros((50, 50), dtype=np.float32)
    ink[10:40, 20:30] = 1.0
    ink[2, 2] = ink[47, 47] = 0.1
    rows, columns = framing.ink_bounding_box(ink)
    assert (rows, columns) == (slice(10, 40), slice(20, 30))


@pytest.mark.parametrize(("shape", "box", "expected"), [((100, 50), 20, (20, 10)), ((30, 300), 20, (2, 20)),
                                                        ((7, 5), 20, (20, 14)), ((100, 50), 28, (28, 14))])
def test_fit_in_box_keeps_the_aspect_ratio(shape, box, expected):
    patch = framing.fit_in_box(np.ones(shape, dtype=np.float32), box)
    assert patch.shape == expected and patch.min() >= 0 and patch.max() <= 1


def test_centre_of_mass_lands_on_the_centre():
    patch = np.zeros((20, 12), dtype=np.float32)
    patch[:, :3] = 1.0
    patch[15:, :] = 1.0
    canvas = framing.place_on_canvas(patch, "mass")
    row, column = framing.centre_of_mass(canvas)
    assert abs(row - 14) <= 0.5 and abs(column - 14) <= 0.5
    assert canvas.sum() == patch.sum()


def test_a_lopsided_patch_is_clamped_rather_than_cut():
    patch = np.zeros((20, 20), dtype=np.float32)
    patch[0, 0], patch[19, 19] = 1.0, 0.01
    canvas = framing.place_on_canvas(patch, "mass")
    # The centre of mass asks for a 14-pixel shift; 8 is the most that keeps the far corner on the canvas.
    assert canvas[8, 8] == 1.0 and canvas[27, 27] == pytest.approx(0.01)


def test_fashion_items_fill_the_canvas_centred_by_their_box():
    image = Image.new("L", (300, 200), 255)
    image.paste(0, (100, 50, 200, 150))
    image.paste(0, (100, 150, 140, 170))
    output = numbers.model_input(image, "fashion_mnist")[..., 0]
    rows, columns = np.flatnonzero(output.any(axis=1)), np.flatnonzero(output.any(axis=0))
    assert rows[-1] - rows[0] + 1 == 28
    assert abs(columns[0] - (27 - columns[-1])) <= 1 and columns[-1] - columns[0] + 1 == 23


def test_large_images_are_shrunk_before_processing():
    image = Image.new("L", (3000, 2000), 255)
    image.paste(0, (1400, 600, 1600, 1400))
    assert max(loading.shrink(image).size) == loading.WORKING_SIZE
    output = numbers.model_input(image, "mnist")[..., 0]
    assert np.flatnonzero(output.any(axis=1)).size == 20


@pytest.mark.parametrize("image", [
    pytest.param(Image.new("L", (50, 50), 255), id="white"),
    pytest.param(Image.new("RGB", (50, 50), (30, 30, 30)), id="dark"),
    pytest.param(Image.new("RGBA", (50, 50), (0, 0, 0, 0)), id="transparent"),
    pytest.param(Image.effect_noise((50, 50), 1).point(lambda value: 200 + value // 64), id="paper-grain"),
])
def test_blank_images_are_refused(image):
    with pytest.raises(loading.ImageError, match="blank image"):
        numbers.model_input(image, "mnist")


def test_load_image_messages(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    buffer = io.BytesIO()
    Image.effect_noise((50, 50), 64).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    expectations = {"missing.png": "file not found", "notes.png": "not an image", "cut.png": "corrupt or truncated",
                    "big.png": "over the limit of 9,999 pixels", ".": "is a folder"}
    for name, message in expectations.items():
        with pytest.raises(loading.ImageError, match=message):
            loading.load_image(tmp_path / name, max_pixels=9_999)


@pytest.mark.parametrize("pillow_limit", [6_000, 4_000], ids=["warning", "error"])
def test_pillow_decompression_bomb_checks_become_errors(tmp_path, monkeypatch, pillow_limit):
    """Pillow warns between its limit and twice that, and raises beyond: both refuse the file."""
    Image.new("L", (100, 100)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
    with pytest.raises(loading.ImageError, match="decompression bomb"):
        loading.load_image(tmp_path / "bomb.png", max_pixels=10**9)


def test_preprocessed_names_never_collide():
    names = predict.preprocessed_names(["a/digit.png", "b/digit.jpg", "digit.gif", "seven.png"])
    assert names == ["digit-28x28.png", "digit-2-28x28.png", "digit-3-28x28.png", "seven-28x28.png"]


def test_defaults_come_from_params_yaml(tmp_path, monkeypatch, raw_params, digit_file, model_path, capsys):
    """Without --model and --dataset, main takes paths.model and data.dataset from params.yaml; none there, or an
    invalid one, is one line saying what to pass."""
    monkeypatch.chdir(tmp_path)
    assert predict.main([str(digit_file)]) == predict.EXIT_BAD_MODEL
    error = capsys.readouterr().err
    assert "params.yaml not found" in error and "pass --model PATH and --dataset NAME" in error
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(model_path, tmp_path / "elsewhere" / "model.keras")
    raw = {**raw_params, "paths": {**raw_params["paths"], "model": "elsewhere/model.keras"},
           "data": {**raw_params["data"], "dataset": "fashion_mnist"}}
    write_params(tmp_path, raw)
    assert predict.main([str(digit_file), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["label"] == class_names("fashion_mnist")[record["predicted"]]  # the dataset params.yaml names
    Path("params.yaml").write_text("train: {epochz: 3}\n")
    assert predict.main([str(digit_file)]) == predict.EXIT_BAD_MODEL
    error = capsys.readouterr().err
    assert error.startswith("error: params.yaml is invalid") and "--model PATH and --dataset NAME" in error
    assert len(error.splitlines()) == 1


def predict_arrays(model, arrays) -> np.ndarray:
    """The model's own (uncalibrated) probabilities, through the one reader."""
    return Reader(model, class_names("mnist"), "mnist", "the session's model").probabilities(list(arrays))


def read_files(paths, model) -> tuple[list, list]:
    """The answers of the readable files and (file, reason) of the others, as predict reads them."""
    prepared, failed = prepare_files(paths, "mnist")
    return Reader(model, class_names("mnist"), "mnist", "the session's model").answers(prepared), failed


# --- agreement with the model on real digits --------------------------------------------------------------------

@pytest.fixture(scope="session")
def reference_predictions(model, test_digits) -> np.ndarray:
    """The model's classes for the original 28x28 arrays: what every rendered form must reproduce."""
    return predict_arrays(model, as_input(test_digits[:AGREEMENT_DIGITS])).argmax(axis=1)


@pytest.mark.parametrize("form", list(FORMS))
def test_agreement_with_the_original_digits(form, model, test_digits, reference_predictions, tmp_path):
    paths = render_files(form, test_digits[:AGREEMENT_DIGITS], tmp_path)
    predictions, failed = read_files(paths, model)
    assert failed == []
    assert [prediction.file for prediction in predictions] == [str(path) for path in paths]
    agreement = np.mean(np.array([prediction.predicted for prediction in predictions]) == reference_predictions)
    print(f"\nagreement {form:18s} {agreement:6.1%} on {len(paths)} digits")
    assert agreement >= MIN_AGREEMENT


# --- the command line -------------------------------------------------------------------------------------------

def test_bad_inputs_are_reported_and_the_rest_predicted(tmp_path, digit_file, model_path, capsys):
    (tmp_path / "notes.png").write_text("not an image")
    Image.new("RGB", (64, 64), "white").save(tmp_path / "blank.png")
    # 48 million pixels in a few kilobytes: a PNG of one colour compresses to almost nothing.
    Image.new("1", (8000, 6000)).save(tmp_path / "huge.png")
    bad = {"missing.png": "file not found", "notes.png": "not an image", "blank.png": "blank image",
           "huge.png": "over the limit of 40,000,000 pixels"}
    files = [str(tmp_path / name) for name in ["missing.png", "notes.png", "blank.png", "huge.png"]]
    exit_code = predict.main([*files[:2], str(digit_file), *files[2:], "--model", str(model_path)])
    output = capsys.readouterr()
    assert exit_code == 1
    assert len(output.out.splitlines()) == 1 and output.out.startswith(f"{digit_file}: ")
    named, *errors = output.err.strip().splitlines()
    assert named == f"model: {model_path} (lenet, keras), uncalibrated"
    assert len(errors) == len(bad)
    for error, (name, message) in zip(errors, bad.items(), strict=True):
        assert error.startswith(f"error: {tmp_path / name}: ") and message in error


def test_text_output(digit_file, model_path, test_digits, model, capsys):
    assert predict.main([str(digit_file), "--model", str(model_path), "--top", "2"]) == 0
    expected = predict_arrays(model, list(as_input(test_digits[:1])))[0].argmax()
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{digit_file}: {expected} (") and "top 2: " in line and line.count("%") == 3


def test_json_output(digit_file, tmp_path, model_path, capsys):
    other = tmp_path / "other.png"
    Image.open(digit_file).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other)
    assert predict.main([str(digit_file), str(other), "--model", str(model_path), "--json", "--top", "4"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["file"] for record in records] == [str(digit_file), str(other)]
    for record in records:
        assert set(record) == {"file", "predicted", "label", "confidence", "top", "not_sure", "reason"}
        assert record["label"] == str(record["predicted"])
        assert len(record["top"]) == 4
        assert record["top"][0] == {"class": record["predicted"], "label": record["label"],
                                    "probability": record["confidence"]}
        probabilities = [entry["probability"] for entry in record["top"]]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6


def test_fashion_class_names(digit_file, model_path, capsys):
    assert predict.main([str(digit_file), "--model", str(model_path), "--json", "--dataset", "fashion_mnist"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["label"] == class_names("fashion_mnist")[record["predicted"]]


def test_save_preprocessed_writes_what_the_model_saw(tmp_path, test_digits, model_path, capsys):
    paths = render_files("off_centre", test_digits[:3], tmp_path / "inputs")
    out = tmp_path / "seen"
    assert predict.main([*map(str, paths), "--model", str(model_path), "--save-preprocessed", str(out)]) == 0
    for path in paths:
        written = Image.open(out / f"{path.stem}-28x28.png")
        assert written.size == (28, 28) and written.mode == "L"
        fed = numbers.model_input(loading.load_image(path), "mnist")
        assert np.array_equal(np.asarray(written), np.round(fed[..., 0] * 255).astype(np.uint8))
    assert len(capsys.readouterr().out.splitlines()) == 3


@pytest.fixture
def number_file(tmp_path, test_digits, model) -> tuple[Path, str]:
    """A photo of a number written with four test digits, and the number the model reads in the original digits."""
    from benchmarks.photo_forms import written_number

    digits = test_digits[:4]
    photo, _ = written_number(list(digits), np.random.default_rng(3))
    path = tmp_path / "number.jpg"
    photo.save(path)
    expected = predict_arrays(model, list(as_input(digits))).argmax(axis=1)
    return path, "".join(map(str, expected))


def test_number_text_output(number_file, model_path, capsys):
    path, number = number_file
    assert predict.main([str(path), "--number", "--model", str(model_path)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{path}: {number}  (") and line.count("%") == len(number)


def test_number_json_has_boxes_left_to_right(number_file, model_path, capsys, tmp_path):
    path, number = number_file
    out = tmp_path / "seen"
    arguments = [str(path), "--number", "--json", "--model", str(model_path), "--save-preprocessed", str(out)]
    assert predict.main(arguments) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["file"] == str(path) and record["number"] == number
    boxes = [digit["box"] for digit in record["digits"]]
    assert [box["x"] for box in boxes] == sorted(box["x"] for box in boxes)
    assert [digit["label"] for digit in record["digits"]] == list(number)
    written = sorted(out.iterdir())
    assert [file.name for file in written] == [f"number-{position}-28x28.png" for position in range(1, 5)]
    assert all(Image.open(file).size == (28, 28) for file in written)


def test_number_bad_inputs_one_line_each(tmp_path, number_file, model_path, capsys):
    path, number = number_file
    (tmp_path / "notes.jpg").write_text("not an image")
    Image.new("L", (400, 300), 235).save(tmp_path / "blank.png")
    Image.new("1", (8000, 6000)).save(tmp_path / "huge.png")
    files = [tmp_path / name for name in ("notes.jpg", "blank.png", "huge.png")]
    assert predict.main([*map(str, files), str(path), "--number", "--model", str(model_path)]) == 1
    output = capsys.readouterr()
    assert output.out.strip().startswith(f"{path}: {number}")
    named, *errors = output.err.strip().splitlines()
    assert named.startswith(f"model: {model_path} ")
    assert len(errors) == 3
    for error, file, message in zip(errors, files, ["not an image", "blank image", "over the limit"], strict=True):
        assert error.startswith(f"error: {file}: ") and message in error


def test_number_of_touching_digits_is_read(tmp_path, test_digits, model, model_path, capsys):
    """Pairs of digits whose ink touches are cut apart and read (75% of pairs are cut right: two narrow digits
    touching look like one; the session's small model reads 95% of single digits); each cut is said unsure. Read
    as one mark, before cuts, none was. A page of specks has no digits (exit 1, one line)."""
    from benchmarks.photo_forms import written_number

    files, numbers_read = [], []
    for first in range(0, 12, 2):
        digits = test_digits[first:first + 2]
        photo, _ = written_number(list(digits), np.random.default_rng(first), touching=1.0)
        files.append(tmp_path / f"touching-{first}.png")
        photo.save(files[-1])
        numbers_read.append("".join(map(str, predict_arrays(model, list(as_input(digits))).argmax(axis=1))))
    assert predict.main([*map(str, files), "--number", "--json", "--model", str(model_path)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    right = [record for record, number in zip(records, numbers_read, strict=True) if record["number"] == number]
    assert len(right) >= 3, (records, numbers_read)
    assert all(0 <= record["split"] < 1 for record in right)
    specks = np.full((300, 400), 235, np.uint8)
    for row, column in np.random.default_rng(0).integers(10, 290, (30, 2)):
        specks[row:row + 3, column:column + 3] = 20
    Image.fromarray(specks).save(tmp_path / "specks.png")
    assert predict.main([str(tmp_path / "specks.png"), "--number", "--model", str(model_path)]) == 1
    assert f"error: {tmp_path / 'specks.png'}: no digits found" in capsys.readouterr().err


def test_serve_and_files_are_exclusive(capsys):
    for arguments in ([], ["digit.png", "--serve"]):
        with pytest.raises(SystemExit) as exit_info:
            predict.main(arguments)
        assert exit_info.value.code == 2
    assert "give IMAGE files to classify, or --serve" in capsys.readouterr().err


def test_missing_model_says_run_dvc_repro(digit_file, tmp_path, capsys):
    assert predict.main([str(digit_file), "--model", str(tmp_path / "model.keras")]) == 2
    output = capsys.readouterr()
    assert output.out == ""
    assert output.err.startswith("error: model file") and "run `dvc repro` first" in output.err
    assert len(output.err.strip().splitlines()) == 1


def test_a_file_that_is_not_a_keras_model(digit_file, tmp_path, capsys):
    fake = tmp_path / "model.keras"
    fake.write_text("weights, honest")
    assert predict.main([str(digit_file), "--model", str(fake)]) == 2
    error = capsys.readouterr().err
    assert "is not a loadable Keras model" in error and "run `dvc repro` first" in error
    assert len(error.strip().splitlines()) == 1



@pytest.mark.parametrize("top", ["0", "11"])
def test_top_out_of_range_is_a_usage_error(digit_file, top, capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(digit_file), "--top", top])
    assert exit_info.value.code == 2 and "--top must be between 1" in capsys.readouterr().err


def test_command_line_exit_code(digit_file, tmp_path, model_path):
    """The real `python -m stages.predict`, from a folder without params.yaml."""
    result = subprocess.run(
        [sys.executable, "-m", "stages.predict", str(digit_file), "missing.png", "--model", str(model_path),
         "--dataset", "mnist"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 1
    assert result.stdout.startswith(f"{digit_file}: ") and len(result.stdout.splitlines()) == 1
    assert "error: missing.png: file not found" in result.stderr
    assert "Traceback" not in result.stderr


# --- --label: your own digits -------------------------------------------------------------------------------------

@pytest.fixture
def own_project(tmp_path, monkeypatch, raw_params) -> Path:
    """A working directory whose params.yaml keeps own digits in ./own; returns that folder."""
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, {**raw_params, "paths": {**raw_params["paths"], "own": "own"}})
    return tmp_path / "own"


def stored_files(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.png")) if folder.exists() else []


def test_label_stores_what_the_model_saw_and_the_crop(own_project, digit_file, model_path, test_digits, capsys):
    from stages.reading import own

    assert predict.main([str(digit_file), "--label", "4", "--model", str(model_path)]) == 0
    output = capsys.readouterr().out.splitlines()
    assert output[0].startswith(f"{digit_file}: ") and output[1].startswith("stored 1 digit(s) as your own in own")
    [image, crop] = stored_files(own_project)[::-1]
    assert image.startswith("4/") and crop == image.replace(".png", own.CROP_SUFFIX)
    seen = numbers.model_input(loading.load_image(digit_file), "mnist")
    with Image.open(own_project / image) as stored:
        np.testing.assert_array_equal(np.asarray(stored), own.as_bytes(seen))
    assert Path(image).stem == own.digit_hash(own.as_bytes(seen), 4)
    assert predict.main([str(digit_file), "--label", "4", "--model", str(model_path)]) == 0
    assert "stored 0 digit(s) as your own in own (1 confirmed before)" in capsys.readouterr().out
    assert len(stored_files(own_project)) == 2


def test_number_label_stores_each_digit(own_project, number_file, model_path, capsys):
    path, number = number_file
    assert predict.main([str(path), "--number", "--label", "1234", "--model", str(model_path)]) == 0
    files = [name for name in stored_files(own_project) if not name.endswith("-crop.png")]
    assert sorted(name.split("/")[0] for name in files) == ["1", "2", "3", "4"]  # the classes confirmed, not read
    capsys.readouterr()
    assert predict.main([str(path), "--number", "--label", "12", "--model", str(model_path)]) == 1
    named, error = capsys.readouterr().err.strip().splitlines()
    assert named.startswith(f"model: {model_path} (lenet, keras")
    assert error == (f"error: {path}: 4 digit(s) read but the label 12 has 2; nothing was stored (write the digits "
                     "apart, or label what was read)")
    assert len(stored_files(own_project)) == 8


@pytest.mark.parametrize(("arguments", "message"), [
    (["--label", "12"], "error: label '12' is not a class of mnist: give one of 0, 1, 2, 3, 4, 5, 6, 7, 8, 9; "
                        "nothing was stored"),
    (["--label", "seven"], "error: label 'seven' is not a class of mnist"),
    (["--number", "--label", "4-0"], "error: label '4-0' is not a number"),
    # str.isdigit() takes both; int() refuses both (a traceback once).
    (["--label", "²"], "error: label '²' is not a class of mnist: give one of 0, 1, 2, 3, 4, 5, 6, 7, 8, 9"),
    (["--label", "9" * 5000], "error: label '99999999999999999999...' (5,000 characters) is not a class of mnist"),
    (["--number", "--label", "²"], "error: label '²' is not a number of at most 100 digits"),
    (["--number", "--label", "9" * 5000], "error: label '99999999999999999999...' (5,000 characters) is not a number"),
], ids=["not-a-class", "a-word", "not-a-number", "superscript-two", "5000-digits", "number-superscript-two",
        "number-5000-digits"])
def test_a_label_that_is_no_class_is_refused_before_anything(own_project, digit_file, tmp_path, arguments, message,
                                                             capsys):
    # No model at all: the label is checked before TensorFlow starts and before any model is read.
    assert predict.main([str(digit_file), *arguments, "--model", str(tmp_path / "none.keras")]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(message) and len(error.splitlines()) == 1
    assert stored_files(own_project) == []


def test_own_folder_not_a_folder_is_one_line(own_project, digit_file, model_path, capsys):
    own_project.write_text("not a folder")
    assert predict.main([str(digit_file), "--label", "4", "--model", str(model_path)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == ("error: own is not a folder: your own digits are kept in the folder paths.own names "
                     "(params.yaml); move what is there away, then try again")
    assert own_project.read_text() == "not a folder"


def test_label_stores_nothing_when_an_image_fails(own_project, digit_file, model_path, tmp_path, capsys):
    (tmp_path / "notes.jpg").write_text("not an image")
    assert predict.main([str(digit_file), str(tmp_path / "notes.jpg"), "--label", "7", "--model",
                         str(model_path)]) == 1
    assert "nothing was stored: --label stores all the images or none" in capsys.readouterr().err
    assert stored_files(own_project) == []


# --- confidence -------------------------------------------------------------------------------------------------

def not_digits() -> dict[str, Image.Image]:
    """A scribble, a letter and a page of specks, dark on white."""
    from PIL import ImageDraw

    rng = np.random.default_rng(0)
    scribble = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(scribble).line([tuple(point) for point in rng.integers(30, 170, (14, 2))], fill=0, width=9)
    letter = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(letter).line([(50, 170), (100, 30), (150, 170)], fill=0, width=14)  # an A
    ImageDraw.Draw(letter).line([(72, 115), (128, 115)], fill=0, width=14)
    specks = np.full((200, 200), 255, np.uint8)
    for row, column in rng.integers(10, 190, (40, 2)):
        specks[row:row + 3, column:column + 3] = 0
    return {"scribble": scribble, "letter": letter, "specks": Image.fromarray(specks)}


def test_a_scribble_a_letter_and_specks_are_not_sure(tmp_path, model, test_digits, test_labels):
    """With the model's temperature fitted on digits, as train does on the validation digits."""
    from stages.core.calibration import fit_temperature
    from stages.core.shipping import inference_model

    temperature = fit_temperature(model.predict(normalize(test_digits[:500]), verbose=0), test_labels[:500])
    files = []
    for name, image in not_digits().items():
        image.save(tmp_path / f"{name}.png")
        files.append(str(tmp_path / f"{name}.png"))
    predictions, failed = read_files(files, inference_model(model, temperature))
    texts = {Path(prediction.file).stem: prediction.as_text(3) for prediction in predictions}
    print(f"T {temperature:.2f}", texts, failed)
    assert not failed
    assert all(" not sure: " in text for text in texts.values()), texts


def test_an_unknown_registered_name_or_alias_gets_a_did_you_mean(tmp_path, monkeypatch, raw_params, digit_file,
                                                                 capsys):
    """After an offline run the model is mnist_10k-cnn: `--model models:/mnist-cnn@champion` names the one there is."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_params(tmp_path, {**raw_params, "tracking": {**raw_params["tracking"], "uri": store}})
    client = mlflow.MlflowClient(store, store)
    for name in ("mnist_10k-cnn", "mnist_10k-cnn-onnx"):
        client.create_registered_model(name)
    capsys.readouterr()  # the new store's own INFO lines
    expected = {"models:/mnist-cnn@champion": "no registered model 'mnist-cnn'; did you mean 'mnist_10k-cnn'? "
                                              "(registered: mnist_10k-cnn, mnist_10k-cnn-onnx)",
                "models:/mnist_10k-cnn@champoin": "mnist_10k-cnn has no alias 'champoin' (aliases: none)"}
    for uri, reason in expected.items():
        assert predict.main([str(digit_file), "--model", uri]) == predict.EXIT_BAD_MODEL
        error = capsys.readouterr().err
        assert error.startswith(f"error: {uri}: {reason} (store {store})"), error
        assert len(error.splitlines()) == 1
