"""The one reader of a trained model: every door (predict's command line and folders, the drawing page, the image
model MLflow serves) opens the model here and gets the same answer type back.

`open_reader` takes a .keras, .onnx or .tflite file or an MLflow URI (models:/NAME@ALIAS, the tensor or the ONNX
model) through shipping.load_any, with its calibration (stages/core/calibration.py), wherever it lives:

  the exported .onnx and .tflite    T folded into the weights by export (the logits layer scaled by 1/T): they
                                    answer calibrated alone; the ONNX file names T in its metadata (`temperature`)
  the registered tensor model       the same folded inference model, T in its MLmodel metadata (`temperature`),
                                    so `mlflow models serve` answers calibrated too
  the registered ONNX model         the exported file: folded
  the image model                   the raw model.keras and T in its model config, folded when loaded
  models/model.keras (train's)      raw weights; T in run.json (records.read_run), folded when the reader opens it

A model with no known calibration reads as it is, and its model line says `uncalibrated`.

An Answer is one image's class, label, calibrated confidence, top-k and `not_sure` with its reason: `low
confidence` (the top probability below calibration.UNSURE_BELOW) or `unlike a digit` (framing.unlike_a_digit).
A NumberAnswer is a written number's digits, each an Answer, with the separators written between them and how
sure each cut between touching digits was (`split`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from stages.core.calibration import UNSURE_BELOW, fold_temperature
from stages.reading.framing import unlike_a_digit
from stages.reading.loading import MAX_IMAGE_PIXELS, ImageError, load_image
from stages.reading.numbers import model_input, split_number

LOW_CONFIDENCE, UNLIKE_A_DIGIT = "low confidence", "unlike a digit"
BATCH = 256  # images per call of the model: bounds the memory of a long folder


# eq=False: comparing two answers field by field would compare arrays, which has no single truth value.
@dataclass(frozen=True, eq=False)
class Answer:
    """One image's calibrated class probabilities, with the dataset's class names to report them."""

    file: str
    probabilities: np.ndarray
    class_names: list[str] = field(repr=False)
    unlike_a_digit: bool = False  # the model input has more marks or holes than digits have

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def label(self) -> str:
        return self.class_names[self.predicted]

    @property
    def confidence(self) -> float:
        return float(self.probabilities[self.predicted])

    @property
    def reason(self) -> str | None:
        """Why the answer is not sure: `unlike a digit`, `low confidence`, or None when it is sure."""
        if self.unlike_a_digit:
            return UNLIKE_A_DIGIT
        return LOW_CONFIDENCE if self.confidence < UNSURE_BELOW else None

    @property
    def not_sure(self) -> str | None:
        """"not sure: 4 or 9" when there is a reason to doubt the answer, else None."""
        if self.reason is None:
            return None
        first, second = np.argsort(-self.probabilities, kind="stable")[:2]
        return f"not sure: {self.class_names[first]} or {self.class_names[second]}"

    def top(self, count: int) -> list[dict]:
        order = np.argsort(-self.probabilities, kind="stable")[:count]
        return [{"class": int(index), "label": self.class_names[index], "probability": float(self.probabilities[index])}
                for index in order]

    def as_json(self, count: int) -> dict:
        return {"file": self.file, "predicted": self.predicted, "label": self.label, "confidence": self.confidence,
                "top": self.top(count), "not_sure": self.not_sure, "reason": self.reason}

    def as_text(self, count: int) -> str:
        ranked = ", ".join(f"{entry['label']} {entry['probability']:.1%}" for entry in self.top(count))
        answer = f"{self.not_sure} ({self.reason})" if self.reason else self.label
        return f"{self.file}: {answer} ({self.confidence:.1%})  top {count}: {ranked}"


# eq=False: an answer holds arrays.
@dataclass(frozen=True, eq=False)
class NumberAnswer:
    """A written number: one Answer per digit, left to right, each digit's box (x, y, width, height), how sure its
    cut from a touching neighbour was (numbers.Digit.split: 1.0 where no digits touched) and the separator written
    before it ("", ".", "," or " ")."""

    file: str
    digits: list[Answer]
    boxes: list[tuple[int, int, int, int]]
    splits: list[float] = field(default_factory=list)
    separators: list[str] = field(default_factory=list)

    def before(self, position: int) -> str:
        return self.separators[position] if position < len(self.separators) else ""

    @property
    def number(self) -> str:
        return "".join(self.before(position) + digit.label for position, digit in enumerate(self.digits))

    @property
    def split(self) -> float:
        """How sure the least sure cut between touching digits was; 1.0 where no digits touched."""
        return min(self.splits, default=1.0)

    @property
    def reason(self) -> str | None:
        """The first digit's reason for doubt, or None when every digit is sure."""
        return next((digit.reason for digit in self.digits if digit.reason), None)

    def as_json(self, count: int) -> dict:
        digits = []
        for position, (digit, (x, y, width, height)) in enumerate(zip(self.digits, self.boxes, strict=True)):
            record = digit.as_json(count)
            del record["file"]
            split = self.splits[position] if position < len(self.splits) else 1.0
            digits.append({**record, "box": {"x": x, "y": y, "width": width, "height": height}, "split": split,
                           "before": self.before(position)})
        return {"file": self.file, "number": self.number, "split": self.split, "digits": digits}

    def as_text(self, count: int) -> str:
        ranked = ", ".join(f"{digit.not_sure or digit.label} {digit.confidence:.1%}" for digit in self.digits)
        touching = f"  touching digits cut, {self.split:.0%} sure" if self.split < 1 else ""
        return f"{self.file}: {self.number}  ({ranked}){touching}"


def calibration_note(temperature: float | None, where: str) -> str:
    return "uncalibrated" if temperature is None else f"calibrated, T {temperature:g} {where}"


class Reader:
    """A model whose probabilities are calibrated, read one batch at a time (a Keras model is not made for
    concurrent calls), the dataset it frames images for, and the line naming it."""

    def __init__(self, model, class_names: list[str], dataset: str, description: str, source: str = ""):
        self.model, self.class_names, self.dataset = model, class_names, dataset
        self.description, self.source = description, source
        self.lock = threading.Lock()

    def probabilities(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Calibrated class probabilities of 28x28x1 model inputs, BATCH at a time."""
        rows = []
        for start in range(0, len(arrays), BATCH):
            batch = np.stack(arrays[start:start + BATCH]).astype(np.float32)
            with self.lock:
                rows.append(np.asarray(self.model.predict_on_batch(batch), dtype=np.float64))
        return np.concatenate(rows) if rows else np.zeros((0, len(self.class_names)))

    def answers(self, prepared: Sequence[tuple[str, np.ndarray]]) -> list[Answer]:
        """One Answer per (file, model input)."""
        rows = self.probabilities([array for _, array in prepared])
        return [Answer(file, row, self.class_names, unlike_a_digit(array))
                for (file, array), row in zip(prepared, rows, strict=True)]

    def number_answers(self, found: Sequence[tuple[str, list]]) -> list[NumberAnswer]:
        """One NumberAnswer per (file, its digits from numbers.split_number)."""
        answers = iter(self.answers([(file, digit.array) for file, digits in found for digit in digits]))
        return [NumberAnswer(file, [next(answers) for _ in digits], [digit.box for digit in digits],
                             [digit.split for digit in digits], [digit.before for digit in digits])
                for file, digits in found]


def prepare_files(paths: Sequence[str | os.PathLike], dataset: str, number: bool = False,
                  max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[list[tuple[str, object]], list[tuple[str, str]]]:
    """(file, model input) for each readable image, or with `number` (file, its digits); and (file, reason) for
    each one that is not. Needs no model: a file that cannot be read is known before any model loads."""
    prepared, failed = [], []
    for path in paths:
        try:
            image = load_image(path, max_pixels)
            prepared.append((str(path), split_number(image, dataset) if number else model_input(image, dataset)))
        except ImageError as error:
            failed.append((str(path), str(error)))
    return prepared, failed


def folded(model, temperature: float | None, class_names: list[str], dataset: str, description: str) -> Reader:
    """A Keras model and the temperature it was fitted (None: uncalibrated) as a Reader: the image model's door."""
    if temperature is not None:
        model = fold_temperature(model, temperature)
    return Reader(model, class_names, dataset, f"{description}, {calibration_note(temperature, 'in the config')}")
