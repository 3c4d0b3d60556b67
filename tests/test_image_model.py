"""The registered image model, served for real: `mlflow models serve --env-manager local` answers base64 PNGs.

The session's trained model is logged the way the train stage logs it (tracking.log_image_model, in a run of a
SQLite store under tmp_path), then served by MLflow's own command and asked over HTTP.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from servers import free_port, wait_until

from stages import image_model, tracking
from stages.predict import predict_arrays

pytestmark = pytest.mark.slow  # MLflow and TensorFlow in a server process: seconds to start
DIGITS = 20


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_the_served_image_model_answers_pngs(make_params, model_path, model, test_digits, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # the project root, where the store keeps its artifacts
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = make_params(tracking__enabled=True, tracking__uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    Path(params.paths.model).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_path, params.paths.model)
    uri = tracking.tracking_uri(params)
    client, experiment_id = tracking.connect(params)
    run = client.create_run(experiment_id)
    with mlflow.start_run(run_id=run.info.run_id):
        info = tracking.log_image_model(params, uri)
    name = params.tracking.registered_image_model
    assert info.registered_model_version == 1 and name != params.tracking.registered_model
    # The preprocessing code travels with the model (code_paths).
    assert mlflow.models.get_model_info(f"models:/{name}/1").flavors["python_function"]["code"]

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}/1", "--env-manager", "local",
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT,
            # MLflow starts `uvicorn` by name: the environment's bin folder is on PATH, as in an activated venv.
            env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                 "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true",
                 "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""},  # the model brings its own copy of `stages`
        )
    try:
        def answers() -> bool:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
                return True
            except OSError:
                return False

        wait_until(answers, 240, "mlflow models serve", server, log)
        digits = test_digits[:DIGITS]
        encoded = [png_base64(Image.fromarray(255 - digit)) for digit in digits]
        encoded += ["this is not base64!", base64.b64encode(b"plain text, no image").decode("ascii")]
        body = json.dumps({"dataframe_split": {"columns": [image_model.INPUT_COLUMN], "data": [[e] for e in encoded]}})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            predictions = json.loads(response.read())["predictions"]
    finally:
        server.terminate()
        server.wait(timeout=60)

    expected = predict_arrays(model, list((digits / 255).astype(np.float32)[..., np.newaxis])).argmax(axis=1)
    served = [row["predicted"] for row in predictions[:DIGITS]]
    print(f"\nserved image model: {np.mean(np.equal(served, expected)):.0%} of {DIGITS} PNGs as the model reads the "
          "original arrays")
    assert np.mean(np.equal(served, expected)) >= 0.95
    for row in predictions[:DIGITS]:
        assert row["error"] == "" and len(row["probabilities"]) == 10
        assert row["confidence"] == pytest.approx(max(row["probabilities"]))
    assert predictions[DIGITS]["predicted"] == -1 and "not base64" in predictions[DIGITS]["error"]
    assert predictions[DIGITS + 1]["predicted"] == -1 and "not an image" in predictions[DIGITS + 1]["error"]
