"""What the register stage writes to the model registry: the image model beside the tensor model, each export format
(stages/core/formats.py) on the same run, test accuracy on each version, and the champion (each export's follows
the tensor model's). The naming rule and the champion race live in versions.py."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from stages.core.errors import PipelineError
from stages.core.formats import FORMATS, registered_kinds
from stages.core.quiet import quietly_logging_models
from stages.core.schema import Params
from stages.core.tracking.store import store_lock, tracking_uri
from stages.core.tracking.versions import follow_champion, promote_champion, registered_name, tag_version

STAGES = Path(__file__).resolve().parents[2]  # the `stages` package, parts of which ship with the image model


def kinds() -> tuple[str, ...]:
    """The registered models of one dataset: the tensor model, the pyfunc taking images, each export format that
    MLflow logs as a model (stages/core/formats.py)."""
    return ("", "images", *registered_kinds())


def log_image_model(params: Params, uri: str, behaviour: type, dataset: str, temperature: float, run_id: str) -> str:
    """Log the trained model ({paths.model}) as a pyfunc that takes base64 PNG/JPEG images, in the training's run
    `run_id`, and register it as a version of `registered_name(params, dataset, "images")` (so `mnist-cnn@champion`
    stays the tensor model); returns the version.

    `behaviour` is stages.reading.image_model.ImageClassifier (passed in: core imports nothing above it); the
    PythonModel class is made here, where mlflow may be imported, and cloudpickle stores it by value and its base
    class by reference to the code shipped with the model: the modules `behaviour.SHIPPED` names, nothing else.
    `dataset` travels in the model's config, so the model frames images and names classes as that dataset does,
    and `temperature` (train's calibration, run.json) too, so its confidences are predict's.
    """
    import keras
    import mlflow
    import numpy as np
    import pandas as pd
    import PIL
    import skimage
    import tensorflow as tf
    from mlflow.models import Model, infer_signature

    python_model = type("ImagePythonModel", (behaviour, mlflow.pyfunc.PythonModel), {})()
    example, output = behaviour.example(dataset)
    with quietly_logging_models(), tempfile.TemporaryDirectory() as staging, store_lock(uri):
        # Model.log, as mlflow.pyfunc.log_model does, but into the finished training's run without reopening it.
        info = Model.log(
            artifact_path=None, name="image_model", flavor=mlflow.pyfunc, run_id=run_id, python_model=python_model,
            artifacts={behaviour.ARTIFACT: str(params.paths.model)},
            model_config={"dataset": dataset, "temperature": float(temperature)},
            code_paths=[str(shipped_package(Path(staging), behaviour.SHIPPED))],
            signature=infer_signature(example, output), input_example=example,
            registered_model_name=registered_name(params, dataset, "images"),
            pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}",
                              f"mlflow=={mlflow.__version__}", f"pillow=={PIL.__version__}",
                              f"scikit-image=={skimage.__version__}", f"numpy=={np.__version__}",
                              f"pandas=={pd.__version__}"],
        )
    return str(info.registered_model_version)


def shipped_package(staging: Path, modules: tuple[str, ...]) -> Path:
    """A copy of the `stages` package holding only `modules` (paths inside it, e.g. reading/framing.py) and the
    packages' docstring-only __init__ files, under `staging`."""
    package = staging / STAGES.name
    for module in modules:
        for folder in [package, *(package / part for part in Path(module).parent.parts)]:
            folder.mkdir(exist_ok=True)
            shutil.copy(STAGES / folder.relative_to(package) / "__init__.py", folder)
        shutil.copy(STAGES / module, package / module)
    return package


def crown(client, params: Params, run_id: str, dataset: str, accuracy: float, test_sha256: str) -> None:
    """Tag this run's tensor and image model versions with the test accuracy and the test set's content hash
    (`test_sha256`, datasets.split_sha256), move `champion` among them, and point each export's champion at the
    same run's version."""
    # The tensor model and the image model of one run are champions together.
    for name in (registered_name(params, dataset), registered_name(params, dataset, "images")):
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        if not versions:
            continue
        with store_lock(tracking_uri(params)):
            tag_version(client, name, versions[0].version, accuracy, test_sha256)
            promote_champion(client, name, test_sha256)
    with store_lock(tracking_uri(params)):
        for kind in registered_kinds():
            follow_champion(client, params, dataset, kind)


def log_exports(params: Params, client, run_id: str, files: dict[str, Path], report: dict, example,
                dataset: str, test_sha256: str) -> dict[str, str]:
    """Attach the exported files (format name -> file) to the training's run: a format with an MLflow flavour
    (stages/core/formats.py) as a model, registered as `registered_name(params, dataset, kind)` and tagged with its
    test accuracy (export's `report`) on the test set `test_sha256`; any other as an artifact under `<format>/`;
    and each file's size and check figures as `export.*` metrics. Returns the versions registered, by name.
    `example`: a few input images, for the signature."""
    import mlflow

    # A model logged by run id alone would land in the default experiment: name the run's.
    mlflow.set_experiment(experiment_id=client.get_run(run_id).info.experiment_id)
    metrics = {f"export.{name}_bytes": entry["bytes"] for name, entry in report["files"].items()}
    for format in files:
        metrics |= {f"export.{format}_{key}": report[format][key] for key in ("max_abs_diff", "agreement")
                    if key in report[format]}
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    versions = {}
    for format, path in files.items():
        spec = FORMATS[format]
        if spec.flavour is None:
            client.log_artifact(run_id, str(path), format)
            continue
        name = registered_name(params, dataset, spec.kind)
        with store_lock(tracking_uri(params)), quietly_logging_models():
            version = FLAVOURS[spec.flavour](path, run_id, name, example)
            tag_version(client, name, version, report["files"][format]["test_accuracy"], test_sha256)
        versions[name] = version
    return versions


def log_onnx(path: Path, run_id: str, name: str, example) -> str:
    """The ONNX file with MLflow's onnx flavour, registered as a version of `name`; returns the version."""
    try:  # before anything is logged: mlflow.onnx needs it to save the model
        import onnx
        import onnxruntime
    except ImportError as error:
        raise PipelineError(f"MLflow's onnx flavour needs the onnx package ({error}): "
                            "`pip install -r requirements.lock`") from None
    import mlflow
    from mlflow.models import infer_signature

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output = session.run(None, {session.get_inputs()[0].name: example})[0]
    info = mlflow.onnx.log_model(
        onnx.load(str(path)), name="onnx_model", run_id=run_id,
        signature=infer_signature({"image": example}, output), input_example={"image": example},
        registered_model_name=name, save_as_external_data=False, onnx_execution_providers=["CPUExecutionProvider"],
        pip_requirements=[f"onnxruntime=={onnxruntime.__version__}", f"onnx=={onnx.__version__}"],
    )
    return str(info.registered_model_version)


FLAVOURS = {"onnx": log_onnx}  # an MLflow flavour of stages/core/formats.py -> how a file is logged with it
