"""The model registry: the image model beside the tensor model, test accuracy on each version, the champion."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from stages.core.errors import PipelineError
from stages.core.schema import Params
from stages.core.tracking.store import attached_run, store_lock, tracking_uri

STAGES = Path(__file__).resolve().parents[2]  # the `stages` package, parts of which ship with the image model


def log_image_model(params: Params, uri: str, behaviour: type, dataset: str):
    """Log the trained model as a pyfunc that takes base64 PNG/JPEG images, in the active run, and register it as
    a version of tracking.registered_image_model (so `mnist-cnn@champion` keeps meaning the tensor model).

    `behaviour` is stages.reading.image_model.ImageClassifier (passed in: core imports nothing above it); the
    PythonModel class is made here, where mlflow may be imported, and cloudpickle stores it by value and its base
    class by reference to the code shipped with the model: the packages `behaviour.SHIPPED` names, nothing else.
    `dataset` travels in the model's config, so the model frames images and names classes as that dataset does.
    """
    import keras
    import mlflow
    import numpy as np
    import pandas as pd
    import PIL
    import skimage
    import tensorflow as tf
    from mlflow.models import infer_signature

    python_model = type("ImagePythonModel", (behaviour, mlflow.pyfunc.PythonModel), {})()
    example, output = behaviour.example(dataset)
    with tempfile.TemporaryDirectory() as staging, store_lock(uri):
        return mlflow.pyfunc.log_model(
            name="image_model", python_model=python_model,
            artifacts={behaviour.ARTIFACT: str(params.paths.model)},
            model_config={"dataset": dataset},
            code_paths=[str(shipped_package(Path(staging), behaviour.SHIPPED))],
            signature=infer_signature(example, output), input_example=example,
            registered_model_name=params.tracking.registered_image_model,
            pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}",
                              f"mlflow=={mlflow.__version__}", f"pillow=={PIL.__version__}",
                              f"scikit-image=={skimage.__version__}", f"numpy=={np.__version__}",
                              f"pandas=={pd.__version__}"],
        )


def shipped_package(staging: Path, packages: tuple[str, ...]) -> Path:
    """A copy of the `stages` package holding only `packages` (e.g. core, reading), under `staging`."""
    package = staging / STAGES.name
    package.mkdir()
    shutil.copy(STAGES / "__init__.py", package)
    for name in packages:
        shutil.copytree(STAGES / name, package / name, ignore=shutil.ignore_patterns("__pycache__"))
    return package


def log_evaluation(params: Params, metrics: dict[str, float], files: list[Path]) -> None:
    """Attach test metrics and report files to the training's run; tag its model version and move `champion`."""
    attached = attached_run(params)
    if attached is None:
        return
    client, run_id = attached
    for key, value in metrics.items():
        if isinstance(value, int | float):  # not the dataset's name: the run carries it as a tag
            client.log_metric(run_id, key, float(value))
    for path in files:
        client.log_artifact(run_id, str(path), "reports")
    if "test_accuracy" not in metrics:
        return
    accuracy = float(metrics["test_accuracy"])
    # The tensor model and the image model of one run are champions together.
    for name in (params.tracking.registered_model, params.tracking.registered_image_model):
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        if not versions:
            continue
        with store_lock(tracking_uri(params)):
            client.set_model_version_tag(name, versions[0].version, "test_accuracy", f"{accuracy:.6f}")
            promote_champion(client, name)


def promote_champion(client, name: str, alias: str = "champion") -> None:
    """Point `alias` at the version with the best test accuracy: set it, read it back, repair it.

    The registry has no lock and no compare-and-set, so two evaluations finishing together can each see only
    their own version and the later write may be the worse one (and two first writes of the alias collide). Each
    evaluation tags its version before calling this, so whoever checks last sees every tag and repairs what an
    earlier, less informed write left behind.
    """
    from mlflow.exceptions import MlflowException

    for _ in range(20):
        scored = [(float(version.tags["test_accuracy"]), -int(version.version), version.version)
                  for version in client.search_model_versions(f"name = '{name}'")
                  if "test_accuracy" in version.tags]
        if not scored:
            return
        accuracy, _, best = max(scored)  # ties: the first version to reach that accuracy keeps it
        try:
            current = client.get_model_version_by_alias(name, alias).version
        except MlflowException:  # no champion yet
            current = None
        if current == best:
            return
        try:
            client.set_registered_model_alias(name, alias, best)
        except MlflowException:  # two first-ever writes collide on the alias's key: read again
            continue
        print(f"registered model {name} version {best} is the {alias} (test accuracy {accuracy:.4f})")
    raise PipelineError(f"the {alias!r} alias of registered model {name!r} kept changing under concurrent updates")
