"""The registered image model: base64 PNG or JPEG strings in, the class, its name, its calibrated confidence and
probabilities and "not sure" (its reason, stages/reading/reader.py) out.

`mlflow models serve -m models:/mnist-cnn-images@champion --env-manager local` answers images with this code:
MLflow ships the modules SHIPPED names with the model (code_paths) and stages/core/tracking/registry.py wraps
ImageClassifier as a pyfunc PythonModel. The model's config names the dataset that trained it, so each image is
framed as that dataset framed its items (an MNIST digit or a Fashion-MNIST item) through the same code as
`python -m stages.predict` (stages/reading/numbers.py), and each answer carries the class name.
This module imports neither mlflow nor, until a model is loaded, TensorFlow.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np

from stages.core.datasets import IMAGE_SIZE, class_names
from stages.reading.loading import ImageError, load_image
from stages.reading.numbers import model_input
from stages.reading.reader import Reader

INPUT_COLUMN = "image"
# not_sure: "" when sure, else the reason (reader.LOW_CONFIDENCE or reader.UNLIKE_A_DIGIT); probabilities calibrated.
OUTPUT_COLUMNS = ["predicted", "label", "confidence", "not_sure", "probabilities", "error"]
# An image in the request is at most this many pixels: a served model should not decode a 40-megapixel bomb.
MAX_PIXELS = 25_000_000


def decode(encoded) -> bytes:
    """The bytes of one base64 string (a data: URL prefix is allowed); ImageError when it is not base64."""
    if isinstance(encoded, bytes):
        encoded = encoded.decode("ascii", errors="replace")
    if not isinstance(encoded, str):
        raise ImageError(f"expected a base64 string of a PNG or JPEG file, got {type(encoded).__name__}")
    if encoded.startswith("data:") and "," in encoded:
        encoded = encoded.split(",", 1)[1]
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("not base64: send each image as the base64 text of its PNG or JPEG file") from None


def classify(reader: Reader, encoded_images) -> list[dict]:
    """One row per image: predicted class, its name, calibrated confidence, why it is not sure ("" when sure) and
    all probabilities, or -1 and the error."""
    rows: list[dict] = []
    prepared, positions = [], []
    for position, encoded in enumerate(encoded_images):
        try:
            prepared.append((str(position), model_input(load_image(decode(encoded), MAX_PIXELS), reader.dataset)))
            positions.append(position)
            rows.append({})
        except ImageError as error:
            rows.append({"predicted": -1, "label": "", "confidence": 0.0, "not_sure": "", "probabilities": [],
                         "error": str(error)})
    for position, answer in zip(positions, reader.answers(prepared), strict=True):
        rows[position] = {"predicted": answer.predicted, "label": answer.label, "confidence": answer.confidence,
                          "not_sure": answer.reason or "",
                          "probabilities": [float(value) for value in answer.probabilities], "error": ""}
    return rows


class ImageClassifier:
    """The pyfunc model's behaviour (load_context, predict), without mlflow: the registry adds the base class."""

    ARTIFACT = "keras_model"  # the .keras file among the logged model's artifacts
    # The modules of the `stages` package this code imports, lazily or not, shipped with the model (and the register
    # stage's deps; tests/test_imports.py keeps the list equal to the imports).
    SHIPPED = ("core/architectures.py", "core/architectures.yaml", "core/calibration.py", "core/datasets.py",
               "core/errors.py", "reading/framing.py", "reading/image_model.py", "reading/ink.py", "reading/loading.py",
               "reading/numbers.py", "reading/paper.py", "reading/reader.py")

    @staticmethod
    def example(dataset: str):
        """(input, output) examples of a request and its answer: a 28x28 stroke on white, as a PNG."""
        import pandas as pd
        from PIL import Image

        canvas = np.full((IMAGE_SIZE, IMAGE_SIZE), 255, dtype=np.uint8)
        canvas[4:24, 13:15] = 0
        buffer = io.BytesIO()
        Image.fromarray(canvas).save(buffer, format="PNG")
        names = class_names(dataset)
        request = pd.DataFrame({INPUT_COLUMN: [base64.b64encode(buffer.getvalue()).decode("ascii")]})
        answer = pd.DataFrame([{"predicted": 1, "label": names[1], "confidence": 0.9, "not_sure": "",
                                "probabilities": [0.1] * len(names), "error": ""}])
        return request, answer

    def load_context(self, context) -> None:
        from stages.core.architectures import load_model
        from stages.reading.reader import folded

        dataset = context.model_config["dataset"]
        names = class_names(dataset)
        model = load_model(context.artifacts[self.ARTIFACT], len(names), advice="log it again: `dvc repro train`")
        # Models logged before calibration existed carry no temperature: their probabilities as they are.
        temperature = context.model_config.get("temperature")
        self.reader = folded(model, None if temperature is None else float(temperature), names, dataset,
                             "the image model")

    def predict(self, context, model_input, params=None):
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            if INPUT_COLUMN not in model_input.columns:
                raise ValueError(f"expected a column {INPUT_COLUMN!r} of base64 PNG or JPEG strings, "
                                 f"got columns {list(model_input.columns)}")
            images = model_input[INPUT_COLUMN].tolist()
        elif isinstance(model_input, dict):
            images = list(model_input.get(INPUT_COLUMN, []))
        else:
            images = list(np.asarray(model_input).ravel())
        return pd.DataFrame(classify(self.reader, images), columns=OUTPUT_COLUMNS)
