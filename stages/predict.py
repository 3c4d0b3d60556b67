"""Classify your own images with the trained model: `python -m stages.predict IMAGE [IMAGE ...]`.

Reads PNG, JPEG, BMP, GIF, WebP and anything else Pillow opens, from clean drawings to photos and scans of paper,
and brings each one to MNIST form the way MNIST itself was made (see stages/reading/: the paper, its
lighting and its rules removed, then cropped to the ink, fitted in 20x20 and centred by mass at (14, 14)).

Prints the predicted class with its confidence and the top-k classes per image (`--json`: one JSON object per
line). `--save-preprocessed DIR` writes the 28x28 images the model saw.

`--number` reads each image as a written number: its digits left to right, each with its probability (`--json`
adds each digit's box in the image's pixels).

`--label 4` confirms (or corrects) what the images are: after the predictions are printed, each image is stored as
one of your own digits of class 4 under `paths.own` (stages/reading/own.py), for the pipeline to learn from with
`data.own: true`. With `--number`, `--label 407` gives each image's digits left to right. Nothing is stored unless
every image was read and (with --number) has as many digits as the label.

`--serve` serves a page to draw digits and numbers on (stages/reading/drawing_page.py) at http://127.0.0.1:8000
instead (`--port` for another port); there you confirm or correct each digit read.

The model defaults to `paths.model` and the class names to `data.dataset`, both from params.yaml in the working
directory; without one, pass --model and --dataset. `--model` also takes the exported `.onnx` (run by ONNX Runtime,
without TensorFlow) and `.tflite` (LiteRT) files, and MLflow model URIs such as `models:/mnist-cnn@champion` (found
in the store params.yaml's tracking section names). One line on stderr names the model that answered.

Exit codes: 0 all images predicted; 1 at least one image could not be read (the others are still predicted), or
a --label that is not a class or does not match what was read;
2 the model is missing or unusable (run `dvc repro` first), or the command line is wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stages.core.architectures import ModelFileError
from stages.core.calibration import CalibratedModel, unsure
from stages.core.errors import PipelineError
from stages.core.files import atomic_path
from stages.core.records import metrics_file, trained_temperature
from stages.core.shipping import load_any
from stages.reading.framing import unlike_a_digit
from stages.reading.loading import MAX_IMAGE_PIXELS, ImageError, load_image, to_png_image
from stages.reading.numbers import model_input, split_number

MODEL_ADVICE = "run `dvc repro` first to train it, or pass --model PATH"

EXIT_OK, EXIT_BAD_IMAGE, EXIT_BAD_MODEL = 0, 1, 2




# eq=False: comparing two predictions field by field would compare arrays, which has no single truth value.
@dataclass(frozen=True, eq=False)
class Prediction:
    """The class probabilities of one image, with the dataset's class names to report them."""

    file: str
    probabilities: np.ndarray
    class_names: list[str] = field(repr=False)
    unlike_a_digit: bool = False  # the model input has more marks or holes than digits have

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.probabilities))

    def top(self, count: int) -> list[dict]:
        order = np.argsort(-self.probabilities, kind="stable")[:count]
        return [
            {"class": int(index), "label": self.class_names[index], "probability": float(self.probabilities[index])}
            for index in order
        ]

    def as_json(self, count: int) -> dict:
        return {
            "file": self.file,
            "predicted": self.predicted,
            "label": self.class_names[self.predicted],
            "confidence": float(self.probabilities[self.predicted]),
            "top": self.top(count),
            "not_sure": self.not_sure,
        }

    @property
    def not_sure(self) -> str | None:
        """"not sure: 4 or 9" when the top probability is low (stages/core/calibration.py), else None."""
        return unsure(self.probabilities, self.class_names, self.unlike_a_digit)

    def as_text(self, count: int) -> str:
        ranked = ", ".join(f"{entry['label']} {entry['probability']:.1%}" for entry in self.top(count))
        confidence = float(self.probabilities[self.predicted])
        answer = self.not_sure or self.class_names[self.predicted]
        return f"{self.file}: {answer} ({confidence:.1%})  top {count}: {ranked}"


def prepare_files(
    paths: Sequence[str | os.PathLike], dataset: str, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, str]]]:
    """(file, model input) for each readable image and (file, reason) for each one that is not."""
    prepared, failed = [], []
    for path in paths:
        try:
            prepared.append((str(path), model_input(load_image(path, max_pixels), dataset)))
        except ImageError as error:
            failed.append((str(path), str(error)))
    return prepared, failed


def preprocessed_names(files: Sequence[str]) -> list[str]:
    """One PNG name per input, `<stem>-28x28.png`, numbered where two inputs share a stem."""
    names, used = [], set()
    for file in files:
        stem, name, number = Path(file).stem, f"{Path(file).stem}-28x28.png", 1
        while name in used:
            number += 1
            name = f"{stem}-{number}-28x28.png"
        used.add(name)
        names.append(name)
    return names


def save_preprocessed(prepared: Sequence[tuple[str, np.ndarray]], directory: str | os.PathLike) -> list[Path]:
    directory = Path(directory)
    written = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for (_, array), name in zip(prepared, preprocessed_names([file for file, _ in prepared]), strict=True):
            with atomic_path(directory / name) as temporary:
                to_png_image(array).save(temporary, format="PNG")
            written.append(directory / name)
    except OSError as error:
        raise PipelineError(f"cannot write the preprocessed images to {directory}: {error.strerror or error}") from None
    return written


def predict_arrays(model, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Class probabilities for a batch of 28x28x1 arrays, in one predict call."""
    return np.asarray(model.predict(np.stack(arrays), verbose=0), dtype=np.float64)


def classify_prepared(model, prepared: list[tuple[str, np.ndarray]], save_dir) -> np.ndarray | None:
    """Save what the model sees (when asked), then classify it in one call; None when nothing could be read."""
    if not prepared:
        return None
    if save_dir is not None:
        save_preprocessed(prepared, save_dir)
    return predict_arrays(model, [array for _, array in prepared])


def predict_files(
    paths: Sequence[str | os.PathLike],
    model,
    class_names: list[str],
    dataset: str,
    save_dir: str | os.PathLike | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """The core of the CLI: predictions for the readable images, in input order, and (file, reason) for the rest."""
    prepared, failed = prepare_files(paths, dataset, max_pixels)
    probabilities = classify_prepared(model, prepared, save_dir)
    if probabilities is None:
        return [], failed
    predictions = [
        Prediction(file, row, class_names, unlike_a_digit(array))
        for (file, array), row in zip(prepared, probabilities, strict=True)
    ]
    return predictions, failed


# eq=False: a reading holds arrays.
@dataclass(frozen=True, eq=False)
class NumberReading:
    """A written number: one Prediction per digit, left to right, and each digit's box (x, y, width, height)."""

    file: str
    digits: list[Prediction]
    boxes: list[tuple[int, int, int, int]]

    @property
    def number(self) -> str:
        return "".join(digit.class_names[digit.predicted] for digit in self.digits)

    def as_json(self, count: int) -> dict:
        digits = []
        for digit, (x, y, width, height) in zip(self.digits, self.boxes, strict=True):
            record = digit.as_json(count)
            del record["file"]
            digits.append({**record, "box": {"x": x, "y": y, "width": width, "height": height}})
        return {"file": self.file, "number": self.number, "digits": digits}

    def as_text(self, count: int) -> str:
        ranked = ", ".join(
            f"{digit.not_sure or digit.class_names[digit.predicted]} {float(digit.probabilities[digit.predicted]):.1%}"
            for digit in self.digits)
        return f"{self.file}: {self.number}  ({ranked})"


def read_number_files(
    paths: Sequence[str | os.PathLike],
    model,
    class_names: list[str],
    dataset: str,
    save_dir: str | os.PathLike | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tuple[list[NumberReading], list[tuple[str, str]]]:
    """`--number`: each image's digits, left to right, and (file, reason) for the images that cannot be read."""
    found, failed = [], []
    for path in paths:
        try:
            found.append((str(path), split_number(load_image(path, max_pixels), dataset)))
        except ImageError as error:
            failed.append((str(path), str(error)))
    # Each digit is saved as <stem>-<position>-28x28.png.
    prepared = [(f"{Path(file).with_suffix('')}-{position}", digit.array)
                for file, digits in found for position, digit in enumerate(digits, start=1)]
    probabilities = classify_prepared(model, prepared, save_dir)
    if probabilities is None:
        return [], failed
    rows = iter(probabilities)
    readings = [
        NumberReading(file, [Prediction(file, next(rows), class_names, unlike_a_digit(d.array)) for d in digits],
                      [d.box for d in digits])
        for file, digits in found
    ]
    return readings, failed


def own_paths_from_params(params_path: str | os.PathLike = "params.yaml") -> tuple[Path, Path]:
    """(where confirmed digits go, the latest metrics): paths.own and paths.metrics, as params.yaml sets them."""
    from stages.core.schema import ParamsError, load_params

    try:
        paths = load_params(params_path).paths
    except ParamsError as error:
        raise PipelineError(f"{str(error).splitlines()[0]}; your digits are stored in the folder params.yaml names "
                            "(paths.own): run from the project root") from None
    return Path(paths.own), metrics_file(paths)


def label_files(paths: Sequence[str | os.PathLike], label: str, number: bool, dataset: str, folder: Path,
                max_pixels: int = MAX_IMAGE_PIXELS) -> list:
    """Store every image's digits as confirmed with `label` (all or nothing); returns what own.store wrote."""
    from stages.reading import own

    classes = own.parse_number_label(label, dataset) if number else [own.parse_label(label, dataset)]
    confirmed = []
    for path in paths:
        image = load_image(path, max_pixels)
        if not number:
            confirmed.append((model_input(image, dataset), classes[0], image, None))
            continue
        digits = split_number(image, dataset)
        if len(digits) != len(classes):
            raise own.LabelError(f"{path}: {len(digits)} digit(s) read but the label {label} has {len(classes)}; "
                                 "nothing was stored (write the digits apart, or label what was read)")
        confirmed += [(digit.array, value, image, digit.box) for digit, value in zip(digits, classes, strict=True)]
    return [own.store(folder, array, value, image, box) for array, value, image, box in confirmed]


def read_params(params_path: str | os.PathLike = "params.yaml"):
    from stages.core.schema import ParamsError, load_params

    try:
        return load_params(params_path)
    except ParamsError as error:
        first_line = str(error).splitlines()[0]
        raise ModelFileError(f"{first_line}; or pass --model PATH and --dataset NAME") from None


def params_for(arguments: argparse.Namespace):
    """params.yaml where the command line needs it (a default, an MLflow URI's store); else only if it is there
    and valid, for what the export stage recorded of the model file."""
    from stages.core.schema import PARAMS_FILE

    if arguments.model is None or arguments.dataset is None or str(arguments.model).startswith("models:/"):
        return read_params(PARAMS_FILE)
    try:
        return read_params(PARAMS_FILE) if Path(PARAMS_FILE).is_file() else None
    except ModelFileError:
        return None


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    from stages.core.datasets import NUM_CLASSES, SELECTABLE

    parser = argparse.ArgumentParser(
        prog="python -m stages.predict",
        description="Classify image files (your own handwriting, photos, drawings) with the trained model.",
        epilog="Exit codes: 0 all predicted; 1 some image could not be read; 2 model missing or unusable.",
    )
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="PNG, JPEG, BMP, GIF or WebP files")
    parser.add_argument("--model", default=None,
                        help="a .keras, .onnx or .tflite file, or an MLflow model URI such as "
                             "models:/mnist-cnn@champion (default: paths.model from params.yaml)")
    parser.add_argument("--top", type=int, default=3, help="how many of the most likely classes to list (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line per image")
    parser.add_argument("--save-preprocessed", type=Path, metavar="DIR",
                        help="write the 28x28 images the model saw into DIR (created if missing; DIR is used as "
                             "given, `..` included, and same-named files in it are overwritten)")
    parser.add_argument("--dataset", choices=SELECTABLE,
                        help="whose class names and framing to use (default: data.dataset from params.yaml)")
    parser.add_argument("--number", action="store_true",
                        help="read each image as a written number: its digits left to right")
    parser.add_argument("--label", metavar="CLASS",
                        help="confirm what the images show and store them as your own digits (paths.own); with "
                             "--number, the number written, e.g. 407")
    parser.add_argument("--serve", action="store_true",
                        help="serve a page to draw digits and numbers on, at http://127.0.0.1:PORT")
    parser.add_argument("--port", type=int, default=8000, help="the drawing page's port (default 8000)")
    arguments = parser.parse_args(argv)
    if arguments.serve == bool(arguments.images):
        parser.error("give IMAGE files to classify, or --serve for the drawing page (not both)")
    if arguments.serve and arguments.label is not None:
        parser.error("--label confirms IMAGE files; on the drawing page, confirm under each digit instead")
    if not 1 <= arguments.top <= NUM_CLASSES:
        parser.error(f"--top must be between 1 and the number of classes, got {arguments.top}")
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (see the module docstring)."""
    arguments = parse_arguments(argv)
    from stages.core.datasets import class_names

    try:
        params = params_for(arguments)
        if params is not None:
            arguments.model = arguments.model or params.paths.model
            arguments.dataset = arguments.dataset or params.data.dataset
        names = class_names(arguments.dataset)
        own_folder = own_paths = None
        if arguments.label is not None:
            from stages.reading import own

            own_folder, _ = own_paths_from_params()
            # A label that is no class fails before TensorFlow's seconds of start-up.
            (own.parse_number_label if arguments.number else own.parse_label)(arguments.label, arguments.dataset)
        elif arguments.serve and Path("params.yaml").is_file():
            own_paths = own_paths_from_params()  # the page stores confirmed digits there, and shows how they do
        model, description = load_any(arguments.model, len(names), MODEL_ADVICE, params)
        print(f"model: {description}", file=sys.stderr)
        if params is not None and Path(arguments.model) == Path(params.paths.model):
            # The temperature train fitted for this model (run.json); another model is read as it is.
            model = CalibratedModel(model, trained_temperature(params.paths))
        if arguments.serve:
            from stages.reading import drawing_page

            drawing_page.serve(model, names, arguments.dataset, arguments.port, own_paths)
            return EXIT_OK
        read = read_number_files if arguments.number else predict_files
        predictions, failed = read(arguments.images, model, names, arguments.dataset, arguments.save_preprocessed)
        stored = []
        if arguments.label is not None and not failed:
            stored = label_files(arguments.images, arguments.label, arguments.number, arguments.dataset, own_folder)
    except ModelFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_MODEL
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_IMAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    for file, reason in failed:
        print(f"error: {file}: {reason}", file=sys.stderr)
    for prediction in predictions:
        if arguments.json:
            print(json.dumps(prediction.as_json(arguments.top)))
        else:
            print(prediction.as_text(arguments.top))
    if arguments.label is not None and failed:
        print("error: nothing was stored: --label stores all the images or none", file=sys.stderr)
    if stored:
        new = sum(entry.new for entry in stored)
        again = f" ({len(stored) - new} confirmed before)" if new < len(stored) else ""
        # `dvc exp run` checks every output out from dvc.lock first: digits not yet recorded there would be dropped.
        print(f"stored {new} digit(s) as your own in {own_folder}{again}: run `dvc repro` next (not `dvc exp run`, "
              "which would drop digits dvc.lock does not record yet); with data.own: true it trains on them",
              file=sys.stderr if arguments.json else sys.stdout)
    return EXIT_BAD_IMAGE if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
