"""Registered models and their versions: the one naming rule, the tensor model train logs (a LoggedModel), the
champion candidates among versions and the runs that died, and downloading a version for predict. Nothing here knows the
export formats (stages/core/formats.py), so a new format reruns no training.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from stages.core.errors import PipelineError, did_you_mean
from stages.core.quiet import no_progress_bars, quietly_logging_models
from stages.core.schema import Params
from stages.core.tracking.store import connect, store_lock, tracking_uri


def registered_name(params: Params, dataset: str, kind: str = "") -> str:
    """The one naming rule of the registry: `<prefix><dataset>-cnn`, `-cnn-images`, `-cnn-onnx`.

    `dataset` is the registry name of the data the run trained on (dataset.json's `dataset`), so models trained on
    different data never share a name, hence never a champion: `mnist-cnn`, `fashion_mnist-cnn`, and the shipped
    sample's `mnist_10k-cnn` (its test digits are held out of MNIST's training set, not MNIST's test set). The
    prefix (tracking.model_prefix, usually empty) keeps one project's models apart on a shared server.
    """
    return f"{params.tracking.model_prefix}{dataset}-cnn" + (f"-{kind}" if kind else "")


def log_tensor_model(model, architecture: str, example, uri: str, temperature: float | None = None):
    """The trained Keras model as a LoggedModel of the active (training) run, named after the architecture (the
    name the UI shows), not registered: the register stage registers it once evaluated and exported. `temperature`:
    train's, folded into the logged copy (float32, as export ships it) and named in its MLmodel metadata, so
    `mlflow models serve` and the reader answer calibrated."""
    import keras
    import mlflow
    import tensorflow as tf
    from mlflow.models import infer_signature

    from stages.core.calibration import fold_temperature

    if temperature is not None:
        original, model = model, keras.models.clone_model(model, clone_function=lambda layer: type(layer).from_config(
            {**layer.get_config(), "dtype": "float32"}))
        model.set_weights(original.get_weights())
        fold_temperature(model, temperature)

    with quietly_logging_models():
        # predict_on_batch: model.predict on NumPy builds a tf.data pipeline, whose first use under op
        # determinism logs a harmless C++ error line.
        signature = infer_signature(example, keras.ops.convert_to_numpy(model.predict_on_batch(example)))
        # mlflow.keras.log_model writes the input example before creating its folder (MLflow 3.17); the TensorFlow
        # flavour saves the same Keras 3 model and gets it right.
        with store_lock(uri):
            return mlflow.tensorflow.log_model(
                model, name=architecture, signature=signature, input_example=example,
                metadata=None if temperature is None else {"temperature": temperature},
                # Given explicitly: inferring them reloads the model in a subprocess (another TensorFlow start).
                pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}",
                                  f"mlflow=={mlflow.__version__}"],
            )


def register_logged_model(model_uri: str, name: str, uri: str) -> str:
    """Register train's LoggedModel (run.json's model_uri) as a version of `name`; returns the version."""
    import mlflow

    with quietly_logging_models(), store_lock(uri):
        return str(mlflow.register_model(model_uri, name).version)


def tag_version(client, name: str, version: str, accuracy: float, test_sha256: str) -> None:
    client.set_model_version_tag(name, version, TEST_SET_TAG, test_sha256)
    client.set_model_version_tag(name, version, "test_accuracy", f"{accuracy:.6f}")


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


def alias_version(client, name: str, alias: str = "champion") -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:  # no champion yet
        return None


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


def model_version(params: Params, uri: str) -> str | None:
    """The version `models:/NAME@ALIAS` points at now (None: nowhere, or the store cannot say); a URI naming a
    version is that version. What the drawing page polls to follow `--model champion`."""
    from mlflow.exceptions import MlflowException

    name, _, alias = uri.removeprefix("models:/").partition("@")
    if not alias:
        return uri
    try:
        client, _ = connect(params)
        return client.get_model_version_by_alias(name, alias).version
    except (MlflowException, PipelineError):
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
            with no_progress_bars():
                local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version.version}",
                                                                 dst_path=folder))
        except MlflowException as error:
            raise PipelineError(f"{uri}: cannot download {name} version {version.version} "
                                f"({error.message.splitlines()[0]})") from None
        logged = mlflow.models.Model.load(str(local))
        flavors = logged.flavors
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
                     "test_accuracy": version.tags.get("test_accuracy"),
                     # folded into the weights (shipping.inference_model); the ONNX file's own metadata says it too
                     "temperature": (logged.metadata or {}).get("temperature")}
