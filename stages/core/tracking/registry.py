"""What the register stage writes to the model registry: the image model beside the tensor model, each export format
(stages/core/formats.py) on the same run, test accuracy on each version, and the champion (each export's follows
the tensor model's). The naming rule lives in versions.py, the champion rule in champion.py."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.core import records
from stages.core.errors import PipelineError
from stages.core.formats import FORMATS, registered_kinds
from stages.core.quiet import quietly_logging_models
from stages.core.schema import Params
from stages.core.tracking import champion
from stages.core.tracking.store import store_lock, tracking_uri
from stages.core.tracking.versions import (
    TEST_SET_TAG,
    alias_version,
    follow_champion,
    registered_name,
    tag_version,
)

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
        # Model.log, as mlflow.pyfunc.log_model does, into a LoggedModel of the finished training's run.
        info = Model.log(
            artifact_path=None, name="image_model", flavor=mlflow.pyfunc, python_model=python_model,
            model_id=run_output(mlflow.MlflowClient(uri), run_id, "image_model"),
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


def run_output(client, run_id: str, name: str, tags: dict[str, str] | None = None) -> str:
    """A new LoggedModel `name` of the run `run_id`, listed among the run's outputs, with `tags`; returns its id.

    Logging a model into a run (a log_model with run_id) links every metric the run holds at the model's step to
    the new model: the run page's Models column would show onnx_model beside system/train_seconds and the test
    metrics. A model logged into this LoggedModel (log_model with model_id, no run) is linked to no metric."""
    from mlflow.entities import LoggedModelOutput

    run = client.get_run(run_id)
    model = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id, tags=tags,
                                       params={key: str(value) for key, value in run.data.params.items()})
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    return model.model_id


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


def crown(client, params: Params, run_id: str, dataset: str, accuracy: float, test_sha256: str,
          own: OwnTest | None = None) -> str | None:
    """Tag this run's tensor and image model versions with the test accuracy and the test set's content hash
    (`test_sha256`, datasets.split_sha256) and, with `own` (the run's own_test digits), its own_test score; re-score
    the current champion on those digits (it never saw them); move `champion` by the rule (params.champion), tag a
    refused version with the rule and numbers, and point the image model's and each export's champion at the same
    run's version. Returns the one line saying who is champion and why (None when this run has no tensor version)."""
    name = registered_name(params, dataset)
    mine = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    for kind in ("", "images"):
        for version in client.search_model_versions(f"name = '{registered_name(params, dataset, kind)}' and "
                                                    f"run_id = '{run_id}'")[:1]:
            tag_version(client, version.name, version.version, accuracy, test_sha256)
            if own is not None:
                client.set_model_version_tag(version.name, version.version, champion.OWN_SET_TAG, own.sha256)
                client.set_model_version_tag(version.name, version.version, champion.own_tag(own.sha256),
                                             f"{own.accuracy:.6f}")
    if not mine:
        return None
    candidate = mine[0].version
    holder = alias_version(client, name)
    if own is not None and holder not in (None, str(candidate)):
        tags = client.get_model_version(name, holder).tags
        if champion.own_tag(own.sha256) not in tags and tags.get(TEST_SET_TAG) == test_sha256:
            score = own.score(f"models:/{name}/{holder}")
            client.set_model_version_tag(name, holder, champion.own_tag(own.sha256), f"{score:.6f}")
    verdict, before = None, None
    held = client.get_model_version(name, holder) if holder not in (None, str(candidate)) else None
    if held is not None and held.tags.get(TEST_SET_TAG) == test_sha256:  # another test set: a new race
        before = champion.Entry.of(held)
        verdict = champion.judge(champion.Entry.of(client.get_model_version(name, candidate)), before,
                                 params.champion, len(own.labels) if own is not None else None)
    with store_lock(tracking_uri(params)):
        final = champion.promote_champion(client, name, test_sha256, params.champion)
    if before is not None and final not in (before.version, str(candidate)):  # a teammate's version won meanwhile
        before = champion.Entry.of(client.get_model_version(name, final))
        verdict = champion.judge(champion.Entry.of(client.get_model_version(name, candidate)), before,
                                 params.champion, len(own.labels) if own is not None else None)
    if verdict is not None and not verdict.takes:
        client.set_model_version_tag(name, candidate, champion.REFUSED_TAG,
                                     f"refused by champion.{verdict.rule}: {verdict.why} (v{before.version})")
    with store_lock(tracking_uri(params)):
        for kind in ("images", *registered_kinds()):
            follow_champion(client, params, dataset, kind)
    entry = champion.Entry.of(client.get_model_version(name, candidate))
    return champion.line(name, entry, before, verdict)


def attach_card(client, card: Path, registered: dict[str, str], model_id: str | None) -> None:
    """The model card on each version just registered (`registered`: name -> version) as its description, and as an
    artifact of the tensor model's LoggedModel `model_id` (the files of its registered version)."""
    text = card.read_text()
    for name, version in registered.items():
        client.update_model_version(name, version, description=text)
    if model_id:
        client.log_model_artifact(model_id, str(card))


@dataclass(frozen=True)
class OwnTest:
    """A run's own_test digits (the split's sha256 in dataset.json), its accuracy on them (metrics.json), and how
    to score a registered model (its `models:/` URI) on them: through the one reader, which core may not import."""

    sha256: str
    images: np.ndarray
    labels: np.ndarray
    accuracy: float
    score: Callable[[str], float]


def log_exports(params: Params, client, run_id: str, files: dict[str, Path], report: dict, example,
                dataset: str, test_sha256: str) -> dict[str, str]:
    """Attach the exported files (format name -> file) to the training's run: a format with an MLflow flavour
    (stages/core/formats.py) as a model of its own, its size and check figures as the model's tags (`export.*`),
    registered as `registered_name(params, dataset, kind)` and tagged with its test accuracy (export's `report`) on
    the test set `test_sha256`; any other as an artifact under `<format>/`; the report itself under `reports/`. The
    run's metrics stay the trained model's. Returns the versions registered, by name. `example`: a few input
    images, for the signature."""
    client.log_artifact(run_id, str(records.export_report_file(params.paths)), "reports")
    versions = {}
    for format, path in files.items():
        spec = FORMATS[format]
        if spec.flavour is None:
            client.log_artifact(run_id, str(path), format)
            continue
        name = registered_name(params, dataset, spec.kind)
        entry = report["files"][format]
        figures = {"file": path.name, "bytes": entry["bytes"], "sha256": entry["sha256"],
                   "test_accuracy": entry["test_accuracy"], **report.get(format, {})}
        with store_lock(tracking_uri(params)), quietly_logging_models():
            model_id = run_output(client, run_id, f"{format}_model",
                                  {f"export.{key}": str(value) for key, value in figures.items()})
            version = FLAVOURS[spec.flavour](path, model_id, name, example)
            tag_version(client, name, version, entry["test_accuracy"], test_sha256)
        versions[name] = version
    return versions


def log_onnx(path: Path, model_id: str, name: str, example) -> str:
    """The ONNX file with MLflow's onnx flavour, into the LoggedModel `model_id`, registered as a version of `name`;
    returns the version."""
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
        onnx.load(str(path)), name=path.stem, model_id=model_id,
        signature=infer_signature({"image": example}, output), input_example={"image": example},
        registered_model_name=name, save_as_external_data=False, onnx_execution_providers=["CPUExecutionProvider"],
        pip_requirements=[f"onnxruntime=={onnxruntime.__version__}", f"onnx=={onnx.__version__}"],
    )
    return str(info.registered_model_version)


FLAVOURS = {"onnx": log_onnx}  # an MLflow flavour of stages/core/formats.py -> how a file is logged with it
