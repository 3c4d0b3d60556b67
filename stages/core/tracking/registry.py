"""The model registry: the image model beside the tensor model, the ONNX export and the LiteRT file on the same run,
test accuracy on each version, the champion (the ONNX model's follows the tensor model's)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from stages.core.errors import PipelineError
from stages.core.formats import FORMATS, registered_kinds
from stages.core.records import read_run
from stages.core.schema import Params, did_you_mean
from stages.core.tracking.store import (
    attached_run,
    connect,
    dataset_digest,
    dataset_name,
    full_store_is_an_error,
    store_lock,
    tracking_uri,
)

STAGES = Path(__file__).resolve().parents[2]  # the `stages` package, parts of which ship with the image model


def kinds() -> tuple[str, ...]:
    """The registered models of one dataset: the tensor model, the pyfunc taking images, each export format that
    MLflow logs as a model (stages/core/formats.py)."""
    return ("", "images", *registered_kinds())


def registered_name(params: Params, dataset: str, kind: str = "") -> str:
    """The one naming rule of the registry: `<prefix><dataset>-cnn`, `-cnn-images`, `-cnn-onnx`.

    `dataset` is the registry name of the data the run trained on (dataset.json's `dataset`), so models trained on
    different data never share a name, hence never a champion: `mnist-cnn`, `fashion_mnist-cnn`, and the shipped
    sample's `mnist_10k-cnn` (its test digits are held out of MNIST's training set, not MNIST's test set). The
    prefix (tracking.model_prefix, usually empty) keeps one project's models apart on a shared server.
    """
    if kind not in kinds():
        raise ValueError(f"registered model kind {kind!r} is not one of {kinds()}")
    return f"{params.tracking.model_prefix}{dataset}-cnn" + (f"-{kind}" if kind else "")


def log_image_model(params: Params, uri: str, behaviour: type, dataset: str, temperature: float = 1.0):
    """Log the trained model as a pyfunc that takes base64 PNG/JPEG images, in the active run, and register it as
    a version of `registered_name(params, dataset, "images")` (so `mnist-cnn@champion` stays the tensor model).

    `behaviour` is stages.reading.image_model.ImageClassifier (passed in: core imports nothing above it); the
    PythonModel class is made here, where mlflow may be imported, and cloudpickle stores it by value and its base
    class by reference to the code shipped with the model: the packages `behaviour.SHIPPED` names, nothing else.
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
    from mlflow.models import infer_signature

    python_model = type("ImagePythonModel", (behaviour, mlflow.pyfunc.PythonModel), {})()
    example, output = behaviour.example(dataset)
    with tempfile.TemporaryDirectory() as staging, store_lock(uri):
        return mlflow.pyfunc.log_model(
            name="image_model", python_model=python_model,
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


def shipped_package(staging: Path, packages: tuple[str, ...]) -> Path:
    """A copy of the `stages` package holding only `packages` (e.g. core, reading), under `staging`."""
    package = staging / STAGES.name
    package.mkdir()
    shutil.copy(STAGES / "__init__.py", package)
    for name in packages:
        shutil.copytree(STAGES / name, package / name, ignore=shutil.ignore_patterns("__pycache__"))
    return package


def log_evaluation(params: Params, metrics: dict[str, float], files: list[Path], dataset: str,
                   test_sha256: str, data_info: dict | None = None) -> None:
    """Attach test metrics and report files to the training's run (linked to its LoggedModel and, given
    `data_info` (dataset.json), to the test split's dataset, so the model page shows them); tag its model versions
    with the test accuracy and the test set's content hash (`test_sha256`, datasets.split_sha256) and move
    `champion`. A full store is one line."""
    with full_store_is_an_error(tracking_uri(params)):
        _log_evaluation(params, metrics, files, dataset, test_sha256, data_info)


def _log_evaluation(params: Params, metrics: dict[str, float], files: list[Path], dataset: str,
                    test_sha256: str, data_info: dict | None) -> None:
    attached = attached_run(params)
    if attached is None:
        return
    client, run_id = attached
    model_id = read_run(params.paths).model_id
    def link(split: str) -> dict:
        """The LoggedModel and the split's dataset a metric was measured with (own_test_*: your own digits)."""
        found = {"model_id": model_id} if model_id else {}
        if model_id and data_info and split in data_info["splits"]:
            found.update(dataset_name=dataset_name(data_info, split), dataset_digest=dataset_digest(data_info, split))
        return found

    for key, value in metrics.items():
        if isinstance(value, int | float):  # not the dataset's name: the run carries it as a tag
            client.log_metric(run_id, key, float(value), **link("own_test" if key.startswith("own_test") else "test"))
    for path in files:
        client.log_artifact(run_id, str(path), "reports")
    if "test_accuracy" not in metrics:
        return
    accuracy = float(metrics["test_accuracy"])
    # The tensor model and the image model of one run are champions together.
    for name in (registered_name(params, dataset), registered_name(params, dataset, "images")):
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        if not versions:
            continue
        with store_lock(tracking_uri(params)):
            client.set_model_version_tag(name, versions[0].version, TEST_SET_TAG, test_sha256)
            client.set_model_version_tag(name, versions[0].version, "test_accuracy", f"{accuracy:.6f}")
            promote_champion(client, name, test_sha256)
    with store_lock(tracking_uri(params)):
        for kind in registered_kinds():
            follow_champion(client, params, dataset, kind)


TEST_SET_TAG = "test_sha256"  # a version's test set: only versions tested on the same content compete
RUN_STATUS_TAG = "run_status"  # on a version whose run ended KILLED or FAILED: it never becomes champion
UNFIT = ("KILLED", "FAILED")


def run_status(client, run_id: str | None) -> str | None:
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        return client.get_run(run_id).info.status
    except MlflowException:  # the run was deleted
        return "DELETED"


def mark_dead_versions(client, run_id: str, status: str, alias: str = "champion") -> None:
    """The model versions a KILLED or FAILED run registered say so, and lose the champion alias if they held it
    (the next evaluation of that model names a new one)."""
    for version in client.search_model_versions(f"run_id = '{run_id}'"):
        client.set_model_version_tag(version.name, version.version, RUN_STATUS_TAG, status)
        if str(client.get_registered_model(version.name).aliases.get(alias)) == str(version.version):
            client.delete_registered_model_alias(version.name, alias)
            print(f"registered model {version.name} version {version.version} is no longer the {alias}: its run "
                  f"ended {status}")


def candidates(client, name: str, test_sha256: str) -> list:
    """The versions of `name` that may be champion: tested on `test_sha256`, from a run that did not fail or die.
    A version found with a dead run gets a `run_status` tag saying so, once."""
    fit = []
    for version in client.search_model_versions(f"name = '{name}'"):
        status = run_status(client, version.run_id)
        if status in UNFIT or status == "DELETED":
            if version.tags.get(RUN_STATUS_TAG) != status:
                client.set_model_version_tag(name, version.version, RUN_STATUS_TAG, status)
            continue
        if "test_accuracy" in version.tags and version.tags.get(TEST_SET_TAG) == test_sha256:
            fit.append(version)
    return fit


def promote_champion(client, name: str, test_sha256: str, alias: str = "champion") -> None:
    """Point `alias` at the best version among those tested on the same test set as the version just evaluated
    (a changed test set starts a new race); set it, read it back, repair it.

    The registry has no lock and no compare-and-set, so two evaluations finishing together can each see only
    their own version and the later write may be the worse one (and two first writes of the alias collide). Each
    evaluation tags its version before calling this, so whoever checks last sees every tag and repairs what an
    earlier, less informed write left behind.
    """
    from mlflow.exceptions import MlflowException

    for _ in range(20):
        scored = [(float(version.tags["test_accuracy"]), -int(version.version), version.version)
                  for version in candidates(client, name, test_sha256)]
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
        print(f"registered model {name} version {best} is the {alias} (test accuracy {accuracy:.4f} on test set "
              f"{test_sha256[:12]})")
    raise PipelineError(f"the {alias!r} alias of registered model {name!r} kept changing under concurrent updates")


def follow_champion(client, params: Params, dataset: str, kind: str, alias: str = "champion") -> None:
    """Point an exported model's `alias` (registered as `kind`, e.g. onnx) at the version from the run of the tensor
    model's; remove it where that run has no such version (a model trained before exports existed), so it never
    names another run's model."""
    from mlflow.exceptions import MlflowException

    name, tensor_name = registered_name(params, dataset, kind), registered_name(params, dataset)
    try:
        run_id = client.get_model_version_by_alias(tensor_name, alias).run_id
    except MlflowException:  # no champion yet
        return
    try:
        current = client.get_model_version_by_alias(name, alias).version
    except MlflowException:  # no ONNX model registered yet, or no alias on it
        current = None
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if not versions:
        if current is not None:
            client.delete_registered_model_alias(name, alias)
            print(f"registered model {name}: no version from the {alias}'s run {run_id}, alias {alias!r} removed")
        return
    best = max(versions, key=lambda version: int(version.version)).version
    if current != best:
        client.set_registered_model_alias(name, alias, best)
        print(f"registered model {name} version {best} is the {alias} (the {alias} of {tensor_name} comes from the "
              "same run)")


def log_exports(params: Params, files: dict[str, Path], metrics: dict[str, float], example, test_accuracy: float,
                dataset: str, test_sha256: str) -> dict[str, str]:
    """Attach the exported files (format name -> file) to the training's run: a format with an MLflow flavour
    (stages/core/formats.py) as a model, registered as `registered_name(params, dataset, kind)` and tagged with
    `test_accuracy` on the test set `test_sha256` (its champion follows the tensor model's); any other as an
    artifact under `<format>/`; and `metrics`. Returns the versions registered, by registered name. Nothing is
    logged when tracking is off or train recorded no run. `example`: a few input images, for the signature."""
    attached = attached_run(params)
    if attached is None:
        return {}
    client, run_id = attached
    import mlflow

    # A model logged by run id alone would land in the default experiment: name the run's.
    mlflow.set_experiment(experiment_id=client.get_run(run_id).info.experiment_id)
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    versions = {}
    for format, path in files.items():
        spec = FORMATS[format]
        if spec.flavour is None:
            client.log_artifact(run_id, str(path), format)
            continue
        name = registered_name(params, dataset, spec.kind)
        with store_lock(tracking_uri(params)):
            version = FLAVOURS[spec.flavour](path, run_id, name, example)
            client.set_model_version_tag(name, version, TEST_SET_TAG, test_sha256)
            client.set_model_version_tag(name, version, "test_accuracy", f"{test_accuracy:.6f}")
            follow_champion(client, params, dataset, spec.kind)
        print(f"logged {path} to MLflow run {run_id} as version {version} of {name}")
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


@contextlib.contextmanager
def quiet_download() -> Iterator[None]:
    """No progress bar: predict's output is its answers."""
    variable = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    saved = os.environ.get(variable)
    os.environ[variable] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = saved


def unknown_name(client, name: str, alias: str) -> str | None:
    """What is wrong with `name@alias` when the name or the alias does not exist, with a did-you-mean among those
    that do (after an offline run the model is `mnist_10k-cnn`, not `mnist-cnn`); None when both exist."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = sorted(client.get_registered_model(name).aliases)
    except MlflowException:
        names = sorted(model.name for model in client.search_registered_models())
        return f"no registered model {name!r}{did_you_mean(name, names)} (registered: {', '.join(names) or 'none'})"
    if alias and alias not in aliases:
        return f"{name} has no alias {alias!r}{did_you_mean(alias, aliases)} (aliases: {', '.join(aliases) or 'none'})"
    return None


@contextlib.contextmanager
def downloaded_model(params: Params, uri: str) -> Iterator[tuple[Path, dict]]:
    """The model file behind a `models:/NAME@ALIAS` or `models:/NAME/VERSION` URI, downloaded to a temporary folder
    that lives as long as the block, and what the registry knows of it: version (`NAME version N`), architecture
    (its run's model.name), format and test accuracy."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client, _ = connect(params)
    reference = uri.removeprefix("models:/")
    name, _, alias = reference.partition("@")
    try:
        if alias:
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = reference.partition("/")
            version = client.get_model_version(name, number)
    except MlflowException as error:
        reason = unknown_name(client, name, alias) or error.message.splitlines()[0]
        raise PipelineError(f"{uri}: {reason} (store {tracking_uri(params)}); see the registered models and their "
                            "aliases in `mlflow ui`") from None
    with tempfile.TemporaryDirectory(prefix="mlflow-model-") as folder:
        try:
            with quiet_download():
                local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version.version}",
                                                                 dst_path=folder))
        except MlflowException as error:
            raise PipelineError(f"{uri}: cannot download {name} version {version.version} "
                                f"({error.message.splitlines()[0]})") from None
        flavors = mlflow.models.Model.load(str(local)).flavors
        if "onnx" in flavors:
            path, format = local / flavors["onnx"]["data"], "onnx"
        elif "tensorflow" in flavors or "keras" in flavors:
            path, format = next(local.rglob("*.keras"), local / "data" / "model.keras"), "keras"
        else:
            raise PipelineError(f"{uri} is a {', '.join(flavors)} model, not one that takes image arrays: use "
                                "a tensor model (<dataset>-cnn) or its ONNX export (<dataset>-cnn-onnx)")
        run = client.get_run(version.run_id) if version.run_id else None
        yield path, {"version": f"{name} version {version.version}", "format": format,
                     "architecture": run.data.params.get("model.name") if run else None,
                     "test_accuracy": version.tags.get("test_accuracy")}
