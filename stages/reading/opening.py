"""Opening a trained model for the reader: `open_reader` takes a .keras, .onnx or .tflite file or an MLflow URI
(models:/NAME@ALIAS, the tensor or the ONNX model) through shipping.load_any, with its calibration (where T lives
in each form: stages/reading/reader.py), `accuracy` scores it on labelled model inputs, and `champion_uri` names the
registry's champion for params.yaml's data.
Kept apart from reader.py so the image model, which ships reader.py, ships none of this.
"""

from __future__ import annotations

import os
from pathlib import Path

from stages.core.datasets import class_names as dataset_class_names
from stages.core.errors import PipelineError
from stages.reading.reader import Reader, calibration_note


def open_reader(source: str | os.PathLike, dataset: str, params=None,
                advice: str = "run `dvc repro` first to train it, or pass --model PATH") -> Reader:
    """The model at `source` (a file or an MLflow URI) with its calibration, for images framed as `dataset`."""
    from stages.core.records import read_run
    from stages.core.shipping import inference_model, load_any

    names = dataset_class_names(dataset)
    loaded = load_any(source, len(names), advice, params)
    model, temperature, where = loaded.model, loaded.temperature, "in the file"
    if temperature is None and getattr(model, "format", "keras") == "keras" and params is not None and \
            Path(str(source)).resolve() == Path(params.paths.model).resolve():
        record = read_run(params.paths, missing_ok=True)
        if record is not None and "temperature" in record.fields:
            temperature, where = record.temperature, "from the training's record"
            model = inference_model(model, temperature)
    note = calibration_note(temperature, where)
    if temperature is None and getattr(model, "format", "") == "litert":  # no metadata in the file to say so
        note = "calibration not recorded (export folds T into a .tflite file; its export report names it)"
    description = f"{loaded.description}, {note}"
    return Reader(model, names, dataset, description, str(source))


def accuracy(source: str, dataset: str, params, images, labels) -> float:
    """The share of `images` (28x28x1 model inputs) the model at `source` reads as `labels`, through the reader:
    the register stage re-scores the champion on a candidate's own_test digits with it."""
    import numpy as np

    reader = open_reader(source, dataset, params, "it is a registered model")
    return float(np.mean(reader.probabilities(list(images)).argmax(axis=1) == np.asarray(labels)))


def champion_uri(params) -> str:
    """`models:/<name>@champion` of the tensor model trained on params.yaml's data (dataset.json's registry name,
    e.g. mnist_10k offline; data.dataset before any preprocess)."""
    from stages.core.records import read_dataset_info
    from stages.core.tracking.versions import registered_name

    try:
        dataset = read_dataset_info(params.paths)["dataset"]
    except PipelineError:  # no preprocess yet: the name params.yaml asks for
        dataset = params.data.dataset
    return f"models:/{registered_name(params, dataset)}@champion"
