"""Classify your own images with the trained model: `python -m stages.predict IMAGE [IMAGE ...]`.

Reads PNG, JPEG, BMP, GIF, WebP and anything else Pillow opens, from clean drawings to photos and scans of paper,
and brings each one to MNIST form the way MNIST itself was made (see stages/reading/: the paper, its
lighting and its rules removed, then cropped to the ink, fitted in 20x20 and centred by mass at (14, 14)).

Prints the predicted class with its calibrated confidence, "not sure" and its reason, and the top-k classes per
image (`--json`: one JSON object per line), all from the one reader (stages/reading/reader.py). A folder or a glob
is read recursively (stages/reading/folders.py); `--csv FILE` writes a row per file as it goes. Every file is
checked before any model loads. `--save-preprocessed DIR` writes the 28x28 images the model saw.

`--number` reads each image as a written number: its digits left to right, each with its probability, a decimal
point, comma or space between them shown as written, and how sure the cut between digits that touch was (`--json`
adds each digit's box in the image's pixels and its `split`). A page with no digit on it (specks only) is an error.

`--label 4` confirms (or corrects) what the images are: after the predictions are printed, each image is stored as
one of your own digits of class 4 under `paths.own` (stages/reading/own.py), for the pipeline to learn from with
`data.own: true`. With `--number`, `--label 407` gives each image's digits left to right. Nothing is stored unless
every image was read and (with --number) has as many digits as the label.

`--serve` serves a page to draw digits and numbers on (stages/reading/drawing_page.py) at http://127.0.0.1:8000
instead (`--port` for another port); there you confirm or correct each digit read.

The model defaults to `paths.model` and the class names to `data.dataset`, both from params.yaml in the working
directory; without one, pass --model and --dataset. `--model` also takes the exported `.onnx` (run by ONNX Runtime,
without TensorFlow) and `.tflite` (LiteRT) files, and MLflow model URIs such as `models:/mnist-cnn@champion` (found
in the store params.yaml's tracking section names), or `champion` (the registry's champion for params.yaml's
dataset). One line on stderr names the model that answered and its calibration.

Exit codes: 0 all images predicted; 1 at least one image could not be read (the others are still predicted), or
a --label that is not a class or does not match what was read;
2 the model is missing or unusable (run `dvc repro` first), or the command line is wrong; 130 interrupted (a --csv
keeps the rows of what was read).
"""

from __future__ import annotations

import stages.core.venv  # noqa: F401  (first: without the project's packages, one line, not a traceback)

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from stages.core.architectures import ModelFileError
from stages.core.errors import PipelineError
from stages.core.files import atomic_path
from stages.core.records import metrics_file
from stages.reading.folders import CsvAnswers, answer_row, error_row, expand, is_batch, not_regular
from stages.reading.loading import MAX_IMAGE_PIXELS, load_image, to_png_image
from stages.reading.numbers import model_input, split_number
from stages.reading.opening import champion_uri, open_reader
from stages.reading.reader import prepare_files

MODEL_ADVICE = "run `dvc repro` first to train it, or pass --model PATH"
CHAMPION = "champion"  # --model champion: the registry's champion for params.yaml's dataset
CHUNK = 64  # images read, answered and written at a time

EXIT_OK, EXIT_BAD_IMAGE, EXIT_BAD_MODEL, EXIT_INTERRUPTED = 0, 1, 2, 130


def preprocessed_names(files: Sequence[str], used: set[str] | None = None) -> list[str]:
    """One PNG name per input, `<stem>-28x28.png`, numbered where two inputs (or names in `used`) share a stem."""
    names, used = [], set() if used is None else used
    for file in files:
        stem, name, number = Path(file).stem, f"{Path(file).stem}-28x28.png", 1
        while name in used:
            number += 1
            name = f"{stem}-{number}-28x28.png"
        used.add(name)
        names.append(name)
    return names


def save_preprocessed(prepared, directory: str | os.PathLike, used: set[str] | None = None) -> list[Path]:
    """Write each (file, 28x28 model input) as a PNG in `directory`."""
    directory = Path(directory)
    written = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for (_, array), name in zip(prepared, preprocessed_names([file for file, _ in prepared], used), strict=True):
            with atomic_path(directory / name) as temporary:
                to_png_image(array).save(temporary, format="PNG")
            written.append(directory / name)
    except OSError as error:
        raise PipelineError(f"cannot write the preprocessed images to {directory}: {error.strerror or error}") from None
    return written


def model_inputs(prepared, number: bool) -> list:
    """(name, 28x28 input) of what the model sees: with --number each digit as <stem>-<position>."""
    if not number:
        return list(prepared)
    return [(f"{Path(file).with_suffix('')}-{position}", digit.array)
            for file, digits in prepared for position, digit in enumerate(digits, start=1)]


class Batch:
    """Files read CHUNK at a time: checked and decoded before the model is opened (a file that cannot be read never
    waits for TensorFlow), answered, then shown or written to the CSV at once."""

    def __init__(self, arguments: argparse.Namespace, open_model):
        self.arguments, self.open_model, self.reader = arguments, open_model, None
        self.read = self.not_sure = 0
        self.failed: list[tuple[str, str]] = []
        self.used: set[str] = set()
        self.csv = CsvAnswers(arguments.csv) if arguments.csv else None

    def chunk(self, files: Sequence[str]) -> None:
        arguments = self.arguments
        irregular = [(file, reason) for file in files if (reason := not_regular(file))]
        regular = [file for file in files if file not in dict(irregular)]
        prepared, failed = prepare_files(regular, arguments.dataset, arguments.number)
        failed = sorted(failed + irregular, key=lambda entry: files.index(entry[0]))  # in the order given
        answers = []
        if prepared:
            if self.reader is None:
                self.reader = self.open_model()
            if arguments.save_preprocessed is not None:
                save_preprocessed(model_inputs(prepared, arguments.number), arguments.save_preprocessed, self.used)
            answers = (self.reader.number_answers if arguments.number else self.reader.answers)(prepared)
        self.read += len(answers)
        self.not_sure += sum(answer.reason is not None for answer in answers)
        self.failed += failed
        if self.csv is not None:
            self.csv.write([answer_row(answer) for answer in answers] + [error_row(*entry) for entry in failed])
            return
        for file, reason in failed:
            print(f"error: {file}: {reason}", file=sys.stderr)
        for answer in answers:
            print(json.dumps(answer.as_json(arguments.top)) if arguments.json else answer.as_text(arguments.top))

    def run(self, files: Sequence[str], progress: bool) -> bool:
        """Read every file; False when interrupted (Ctrl-C or SIGTERM), with what was read written."""
        from tqdm import tqdm

        bar = tqdm(total=len(files), unit="image", file=sys.stderr, disable=not (progress and sys.stderr.isatty()))
        try:
            for start in range(0, len(files), CHUNK):
                self.chunk(files[start:start + CHUNK])
                bar.update(len(files[start:start + CHUNK]))
            return True
        except KeyboardInterrupt:
            return False
        finally:
            bar.close()
            if self.csv is not None:
                self.csv.close()

    def summary(self) -> str:
        where = f"; answers in {self.arguments.csv}" if self.arguments.csv else ""
        return f"read {self.read}, not sure {self.not_sure}, unreadable {len(self.failed)}{where}"


def interrupt_on_sigterm(signum, frame):
    raise KeyboardInterrupt


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

    if arguments.model in (None, CHAMPION) or arguments.dataset is None or str(arguments.model).startswith("models:/"):
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
    parser.add_argument("images", nargs="*", metavar="IMAGE",
                        help="PNG, JPEG, BMP, GIF or WebP files, folders (read recursively) or globs "
                             "('scans/**/*.jpg')")
    parser.add_argument("--model", default=None,
                        help="a .keras, .onnx or .tflite file, an MLflow model URI such as "
                             "models:/mnist-cnn@champion, or `champion`: the registry's champion for params.yaml's "
                             "dataset (default: paths.model from params.yaml)")
    parser.add_argument("--csv", type=Path, metavar="FILE",
                        help="write one row per image (file, class, label, confidence, not_sure, error) to FILE as "
                             "they are read, instead of printing them")
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
        if arguments.model == CHAMPION:
            arguments.model = champion_uri(params)
        class_names(arguments.dataset)
        own_folder = own_paths = None
        batch = any(is_batch(argument) for argument in arguments.images)
        if batch and arguments.label is not None:
            raise PipelineError("--label confirms the image files named on the command line, not a folder or a glob: "
                                "name the files")
        if arguments.label is not None:
            from stages.reading import own

            own_folder, _ = own_paths_from_params()
            # A label that is no class fails before TensorFlow's seconds of start-up.
            (own.parse_number_label if arguments.number else own.parse_label)(arguments.label, arguments.dataset)
        elif arguments.serve and Path("params.yaml").is_file():
            own_paths = own_paths_from_params()  # the page stores confirmed digits there, and shows how they do

        def open_model():
            reader = open_reader(arguments.model, arguments.dataset, params, MODEL_ADVICE)
            print(f"model: {reader.description}", file=sys.stderr)
            return reader

        if arguments.serve:
            from stages.reading import drawing_page

            version_of = None
            if str(arguments.model).startswith("models:/"):
                from stages.core.tracking.versions import model_version

                version_of = lambda: model_version(params, arguments.model)  # noqa: E731
            drawing_page.serve(open_model, arguments.port, own_paths, follow=arguments.model, version_of=version_of)
            return EXIT_OK
        files = expand(arguments.images)
        reading = Batch(arguments, open_model)
        if batch:
            signal.signal(signal.SIGTERM, interrupt_on_sigterm)
        finished = reading.run(files, progress=batch)
        if batch or arguments.csv:
            print(reading.summary(), file=sys.stderr)
        if not finished:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        stored = []
        if arguments.label is not None and not reading.failed:
            stored = label_files(arguments.images, arguments.label, arguments.number, arguments.dataset, own_folder)
    except ModelFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_MODEL
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_IMAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if arguments.label is not None and reading.failed:
        print("error: nothing was stored: --label stores all the images or none", file=sys.stderr)
    if stored:
        new = sum(entry.new for entry in stored)
        again = f" ({len(stored) - new} confirmed before)" if new < len(stored) else ""
        # `dvc exp run` checks every output out from dvc.lock first: digits not yet recorded there would be dropped.
        print(f"stored {new} digit(s) as your own in {own_folder}{again}: run `dvc repro` next (not `dvc exp run`, "
              "which would drop digits dvc.lock does not record yet); with data.own: true it trains on them",
              file=sys.stderr if arguments.json else sys.stdout)
    return EXIT_BAD_IMAGE if reading.failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
