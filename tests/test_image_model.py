"""The registered image model, served for real: `mlflow models serve --env-manager local` answers base64 PNGs.

The session's trained model is logged the way the train stage logs it (tracking.log_image_model, in a run of a
SQLite store under tmp_path), then served by MLflow's own command and asked over HTTP.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stages.core.calibration import scaled
from stages.core.datasets import class_names
from stages.core.tracking import registry, store, versions
from stages.preprocess import normalize
from stages.reading import image_model
from stages.reading.image_model import ImageClassifier
from stages.reading.reader import Reader

DIGITS = 20


def predict_arrays(model, arrays) -> np.ndarray:
    """The model's own (uncalibrated) probabilities, through the one reader."""
    return Reader(model, class_names("mnist"), "mnist", "the session's model").probabilities(list(arrays))


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def log_image_model(params, dataset: str, temperature: float = 1.0):
    """The session's model logged as the register stage logs it, in a run of its own, as an image model of
    `dataset`; returns the version."""
    client, experiment_id = store.connect(params)
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "test_accuracy", 0.9)  # evaluate's, before registration: not the image model's
    return registry.log_image_model(params, store.tracking_uri(params), ImageClassifier, dataset, temperature,
                                    run.info.run_id)


def test_the_served_image_model_answers_pngs(make_params, model_path, model, test_digits, tmp_path, monkeypatch,
                                             model_server):
    import mlflow

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # the project root, where the store keeps its artifacts
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = make_params(tracking__enabled=True, tracking__uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    Path(params.paths.model).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_path, params.paths.model)
    version = log_image_model(params, "mnist")
    name = versions.registered_name(params, "mnist", "images")
    assert version == "1" and name == "mnist-cnn-images"
    # The preprocessing code travels with the model (code_paths): the modules it imports, nothing else.
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=str(tmp_path / "logged")))
    code = local / mlflow.models.get_model_info(f"models:/{name}/1").flavors["python_function"]["code"]
    shipped = {path.relative_to(code).as_posix() for path in code.rglob("*")
               if path.is_file() and "__pycache__" not in path.parts}
    assert {"stages/__init__.py", "stages/core/__init__.py", "stages/reading/numbers.py"} <= shipped
    assert not {"stages/core/entry.py", "stages/reading/drawing_page.html", "stages/reading/own.py"} & shipped
    assert not {path for path in shipped if path.count("/") == 1 and path != "stages/__init__.py"}, shipped
    assert not any(path.startswith("stages/mnist_10k") for path in shipped)

    url = model_server(f"models:/{name}/1", store.tracking_uri(params))
    digits = test_digits[:DIGITS]
    encoded = [png_base64(Image.fromarray(255 - digit)) for digit in digits]
    encoded += ["this is not base64!", base64.b64encode(b"plain text, no image").decode("ascii")]
    body = json.dumps({"dataframe_split": {"columns": [image_model.INPUT_COLUMN], "data": [[e] for e in encoded]}})
    request = urllib.request.Request(f"{url}/invocations", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        predictions = json.loads(response.read())["predictions"]

    expected = predict_arrays(model, list(normalize(digits))).argmax(axis=1)
    served = [row["predicted"] for row in predictions[:DIGITS]]
    print(f"\nserved image model: {np.mean(np.equal(served, expected)):.0%} of {DIGITS} PNGs as the model reads the "
          "original arrays")
    assert np.mean(np.equal(served, expected)) >= 0.95
    for row in predictions[:DIGITS]:
        assert row["error"] == "" and len(row["probabilities"]) == 10
        assert row["confidence"] == pytest.approx(max(row["probabilities"]))
    assert predictions[DIGITS]["predicted"] == -1 and "not base64" in predictions[DIGITS]["error"]
    assert predictions[DIGITS + 1]["predicted"] == -1 and "not an image" in predictions[DIGITS + 1]["error"]


def test_a_fashion_mnist_image_model_frames_items_as_fashion_mnist_and_names_them(make_params, model_path, model,
                                                                                 tmp_path, monkeypatch):
    """The dataset travels with the image model: a Fashion item is framed whole in 28x28 (not as a digit in 20x20
    by centre of mass) and the answer names the class; so does train's temperature, which scales the answer's
    probabilities as predict scales them."""
    import mlflow

    from stages.core.datasets import class_names
    from stages.reading.loading import load_image
    from stages.reading.numbers import model_input

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = make_params(tracking__enabled=True, tracking__uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    Path(params.paths.model).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_path, params.paths.model)
    version = log_image_model(params, "fashion_mnist", temperature=0.5)

    item = np.full((90, 60), 255, dtype=np.uint8)  # a dark boot-like shape, off-centre, on white
    item[20:80, 10:30], item[60:80, 10:55] = 40, 40
    path = tmp_path / "item.png"
    Image.fromarray(item).save(path)
    name = versions.registered_name(params, 'fashion_mnist', 'images')
    registered = mlflow.MlflowClient(params.tracking.uri).get_model_version(name, version)
    logged = mlflow.MlflowClient(params.tracking.uri).get_logged_model(registered.source.removeprefix("models:/"))
    assert (logged.name, logged.source_run_id, logged.metrics or []) == ("image_model", registered.run_id, [])
    served = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    answer = served.predict(pd.DataFrame({"image": [png_base64(Image.open(path))]}))

    framed = {dataset: model_input(load_image(path), dataset) for dataset in ("fashion_mnist", "mnist")}
    assert not np.allclose(framed["fashion_mnist"], framed["mnist"])
    expected = scaled(predict_arrays(model, [framed["fashion_mnist"]]), 0.5)[0]
    np.testing.assert_allclose(answer["probabilities"][0], expected, rtol=1e-5, atol=1e-6)
    assert answer["label"][0] == class_names("fashion_mnist")[int(expected.argmax())]
