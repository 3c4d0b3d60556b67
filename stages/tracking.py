"""MLflow tracking, the only module that imports mlflow.

One MLflow run per trained model: train opens it (`training_run`), evaluate and plots attach to it through the
run id in {paths.run}. The default store is MLflow's SQLite file `mlflow.db` at the project root with
artifacts in `mlartifacts/` beside it; runs made by `dvc exp run --temp/--queue` in a temporary copy still land
there because DVC sets DVC_ROOT to the original repository. `tracking.uri` or MLFLOW_TRACKING_URI selects a
tracking server instead.

MLflow's own exit hook marks an active run FINISHED and it leaves a SIGTERMed run RUNNING, so the status is set
here explicitly: FINISHED, FAILED (an exception) or KILLED (Ctrl-C, or SIGTERM, which stages/entry.py raises as Terminated; or a run whose process
vanished).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stages.common import PipelineError, Terminated, project_root, write_json
from stages.params import Params

RESUME_RUN_FILE = "mlflow_run.json"  # in a resume folder: the run the server lost, for the resumed training
SQLITE_TIMEOUT_SECONDS = 60
HEALTH_TIMEOUT_SECONDS = 10  # a busy server's first request opens its store
# A search worker names its study and trial to the training it starts (through DVC) in these variables.
SEARCH_TAGS = {"SEARCH_STUDY": "search.study", "SEARCH_TRIAL": "search.trial"}
# MLflow 3's UI opens an experiment on the page its kind names; without the tag it shows the GenAI overview.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow caps a dataset digest at 36 characters; the full sha256 goes in the input's tag of this name.
DIGEST_LENGTH = 36
SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}


def tracking_uri(params: Params) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri
    if uri:
        return uri
    return f"sqlite:///{project_root() / 'mlflow.db'}?timeout={SQLITE_TIMEOUT_SECONDS}"


def _is_local_sqlite(uri: str) -> bool:
    return uri.startswith("sqlite:///")


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise schema creation, experiment creation and registry updates across concurrent local runs."""
    if not _is_local_sqlite(uri):
        yield
        return
    lock_path = project_root() / ".mlflow.lock"
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_server(uri: str) -> None:
    """Fail in seconds, before any training, when a tracking server is down, failing or refuses our credentials.

    MLflow would retry for minutes. `/health` answers without credentials, so the probe asks an endpoint that
    basic auth protects, with the credentials MLflow's client would send.
    """
    if not uri.startswith(("http://", "https://")):
        return
    request = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    elif user or password:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user or ''}:{password or ''}".encode()).decode())
    try:
        urllib.request.urlopen(request, timeout=HEALTH_TIMEOUT_SECONDS).close()
    except urllib.error.HTTPError as error:
        if error.code == 401:
            given = "were refused" if user or password else "are missing"
            raise PipelineError(
                f"MLflow tracking server {uri} requires a login and the credentials {given} (HTTP 401): set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to your account on that server"
            ) from None
        if error.code == 403:
            raise PipelineError(
                f"MLflow tracking server {uri}: user {user!r} may not use it (HTTP 403): ask its admin for access"
            ) from None
        # Anything else would become minutes of MLflow's retries (5xx) or an error deep inside a training.
        advice = ("it runs but fails: see the server's log (often its backend store is down)" if error.code >= 500
                  else "is this an MLflow tracking server? Fix tracking.uri / MLFLOW_TRACKING_URI")
        raise PipelineError(
            f"MLflow tracking server {uri} answers HTTP {error.code} ({error.reason}): {advice}, or set "
            "tracking.enabled: false"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise PipelineError(
            f"MLflow tracking server {uri} is unreachable ({reason}): start it, or fix tracking.uri / "
            "MLFLOW_TRACKING_URI, or set tracking.enabled: false"
        ) from None


def check_tracking(params: Params) -> None:
    """Before any slow work: fail when tracking is on and its server is down, failing or refuses us."""
    if params.tracking.enabled:
        check_server(tracking_uri(params))


def connect(params: Params):
    """Point MLflow at the store and return (client, experiment id), creating the experiment once."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(params)
    check_server(uri)
    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # MLflow also exports the URI to os.environ; restore it so the user's setting keeps its meaning.
    if user_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_uri
    name = params.tracking.experiment
    with store_lock(uri):
        try:
            # In the lock: the client creates (migrates) a new SQLite store, which two first runs must not race.
            client = mlflow.MlflowClient(uri, uri)
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                location = (project_root() / "mlartifacts").as_uri() if _is_local_sqlite(uri) else None
                try:
                    return client, client.create_experiment(name, artifact_location=location,
                                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
                except MlflowException:
                    experiment = client.get_experiment_by_name(name)  # another process created it first
            if EXPERIMENT_KIND_TAG not in experiment.tags:  # made before the project set it, or by hand
                try:
                    client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
                except MlflowException:
                    # Two runs setting it at once collide on the tag's key in the server's database; one wins.
                    if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment.experiment_id).tags:
                        raise
        except MlflowException as error:
            raise PipelineError(f"MLflow tracking store {uri} failed: {error.message.splitlines()[0]}") from None
    return client, experiment.experiment_id


def flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list | dict) else value
    return flat


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def run_tags(params: Params, data_hash: str, data_info: dict) -> dict[str, str]:
    import keras
    import tensorflow as tf

    tags = {
        "git.commit": _git("rev-parse", "HEAD") or "unknown",
        "git.dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower(),
        "dataset": data_info["dataset"],  # what preprocess read: the shipped sample, not data.dataset, offline
        "dataset.content_hash": data_info["content_hash"],
        "data.sha256": data_hash,
        "tensorflow.version": tf.__version__,
        "keras.version": keras.__version__,
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    tags.update({tag: os.environ[variable] for variable, tag in SEARCH_TAGS.items() if os.environ.get(variable)})
    if data_info.get("sample_of"):
        tags["dataset.sample_of"] = data_info["sample_of"]
    return tags


def log_datasets(data_info: dict) -> None:
    """The three splits as MLflow dataset inputs of the active run, so the runs table's Dataset column names them.

    Metadata only (name, digest, source): MLflow's own digest would hash a sample of the arrays. The digest is
    the first 36 characters of the split's content sha256, which its input tag `sha256` holds in full.
    """
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    for split, entry in data_info["splits"].items():
        with warnings.catch_warnings():  # a relative path "can be interpreted in multiple ways": all local
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(entry["origin"])
        dataset = MetaDataset(source, name=f"{data_info['dataset']}-{entry['name']}",
                              digest=entry["sha256"][:DIGEST_LENGTH])
        mlflow.log_input(dataset, context=SPLIT_CONTEXTS[split],
                         tags={"sha256": entry["sha256"], "images": str(entry["images"])})


def mark_orphans_killed(client, experiment_id: str, keep: str | None = None) -> None:
    """A run left RUNNING by a process killed with SIGKILL on this host is closed as KILLED (`keep`: the run this
    training resumes)."""
    host = socket.gethostname()
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        pid = run.data.tags.get("pid")
        if run.info.run_id == keep or run.data.tags.get("host") != host or not pid or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            client.set_terminated(run.info.run_id, status="KILLED")
            print(f"marked MLflow run {run.info.run_id} KILLED: its process {pid} is gone")
        except PermissionError:
            pass


class NullRun:
    """Stands in for a run when tracking is off."""

    run_id = None

    def keras_callbacks(self) -> list:
        return []

    def log_training(self, params, model, result, example) -> dict:
        return {"run_id": None}


class TrainingRun:
    def __init__(self, client, run_id: str, uri: str, run_name: str):
        self.client, self.run_id, self.uri, self.run_name = client, run_id, uri, run_name
        self.lost_after: int | None = None  # the last epoch logged before the server went away

    def keras_callbacks(self) -> list:
        import keras

        handle = self

        class EpochMetrics(keras.callbacks.Callback):
            """Logs each epoch as it ends, so curves grow live in `mlflow ui`.

            When the server has gone away, training stops after this epoch's backup (the resume callback runs
            after this one) and fails naming the run; the resumed training logs what was missed.
            """

            def on_epoch_end(self, epoch, logs=None):
                from mlflow.entities import Metric

                if handle.lost_after is not None:
                    return
                stamp = int(time.time() * 1000)
                metrics = [Metric(key, float(value), stamp, epoch + 1) for key, value in (logs or {}).items()]
                try:
                    check_server(handle.uri)  # seconds, where MLflow's own retries would take minutes
                    handle.client.log_batch(handle.run_id, metrics=metrics, synchronous=True)
                except Exception:  # PipelineError from the probe, or whatever MLflow's client raises
                    handle.lost_after = epoch
                    self.model.stop_training = True

            def on_train_end(self, logs=None):
                if handle.lost_after is not None:
                    raise PipelineError(
                        f"MLflow tracking server {handle.uri} went away during training: run {handle.run_name} "
                        f"({handle.run_id}) is incomplete there, with epochs up to {handle.lost_after} logged. "
                        "The training state is kept: start the server and run `dvc repro` again to resume the "
                        "training and complete that run"
                    )

        return [EpochMetrics()]

    def log_missed_epochs(self, history) -> None:
        """Log the epochs (rows of the history frame) the server has no record of: a resumed run's lost epochs."""
        from mlflow.entities import Metric

        logged = {metric.step for metric in self.client.get_metric_history(self.run_id, "loss")}
        stamp = int(time.time() * 1000)
        missed = [Metric(key, float(value), stamp, int(row["epoch"]))
                  for row in history.to_dict("records") if int(row["epoch"]) not in logged
                  for key, value in row.items() if key != "epoch" and value == value]  # NaN: not measured
        for start in range(0, len(missed), 1000):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, metrics=missed[start:start + 1000], synchronous=True)

    def log_training(self, params: Params, model, result: dict, example) -> dict:
        """Log the trained model and its results; returns what run.json records of the run."""
        import keras
        import mlflow
        import pandas as pd
        import tensorflow as tf
        from mlflow.models import infer_signature

        self.log_missed_epochs(pd.read_csv(params.paths.history))
        self.client.log_batch(self.run_id, params=[
            mlflow.entities.Param("model.parameters", str(result["parameters"])),
        ])
        for key in ("train_seconds", "epochs_run", "best_val_accuracy"):
            self.client.log_metric(self.run_id, key, float(result[key]))
        self.client.set_tag(self.run_id, "precision", result["precision"])
        self.client.set_tag(self.run_id, "replicas", str(result["replicas"]))
        for path in (params.paths.summary, params.paths.history):
            self.client.log_artifact(self.run_id, path, "model_outputs")
        if Path("params.yaml").exists():
            self.client.log_artifact(self.run_id, "params.yaml")
        signature = infer_signature(example, model.predict(example, verbose=0))
        # mlflow.keras.log_model writes the input example before creating its folder (MLflow 3.17); the
        # TensorFlow flavour saves the same Keras 3 model and gets it right.
        with store_lock(self.uri):
            info = mlflow.tensorflow.log_model(
                model, name="model", signature=signature, input_example=example,
                registered_model_name=params.tracking.registered_model,
                # Given explicitly: inferring them reloads the model in a subprocess (another TensorFlow start).
                pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}",
                                  f"mlflow=={mlflow.__version__}"],
            )
        log_image_model(params, self.uri)
        return {
            "run_id": self.run_id, "experiment": params.tracking.experiment, "model_uri": info.model_uri,
            "registered_model": params.tracking.registered_model,
            "model_version": str(info.registered_model_version) if info.registered_model_version else None,
        }


def image_python_model():
    """stages.image_model.ImageClassifier as an MLflow PythonModel: the class is made here, where mlflow may be
    imported; cloudpickle stores it by value and its base class by reference to the shipped code."""
    import mlflow

    from stages.image_model import ImageClassifier

    class ImagePythonModel(ImageClassifier, mlflow.pyfunc.PythonModel):
        pass

    return ImagePythonModel()


def log_image_model(params: Params, uri: str):
    """Log the trained model as a pyfunc that takes base64 PNG/JPEG images, in the active run, and register it as
    a version of tracking.registered_image_model (so `mnist-cnn@champion` keeps meaning the tensor model)."""
    import io

    import keras
    import mlflow
    import numpy as np
    import pandas as pd
    import PIL
    import skimage
    import tensorflow as tf
    from mlflow.models import infer_signature

    from stages import image_model

    # An input example: a 28x28 stroke on white, as a PNG.
    canvas = np.full((28, 28), 255, dtype=np.uint8)
    canvas[4:24, 13:15] = 0
    buffer = io.BytesIO()
    PIL.Image.fromarray(canvas).save(buffer, format="PNG")
    example = pd.DataFrame({image_model.INPUT_COLUMN: [base64.b64encode(buffer.getvalue()).decode("ascii")]})
    output = pd.DataFrame([{"predicted": 1, "confidence": 0.9, "probabilities": [0.1] * 10, "error": ""}])
    with store_lock(uri):
        return mlflow.pyfunc.log_model(
            name="image_model", python_model=image_python_model(),
            artifacts={image_model.ARTIFACT: str(params.paths.model)},
            code_paths=[str(Path(__file__).resolve().parent)],  # the `stages` package, imported by the model
            signature=infer_signature(example, output), input_example=example,
            registered_model_name=params.tracking.registered_image_model,
            pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}",
                              f"mlflow=={mlflow.__version__}", f"pillow=={PIL.__version__}",
                              f"scikit-image=={skimage.__version__}", f"numpy=={np.__version__}",
                              f"pandas=={pd.__version__}"],
        )


def _resumable_run(client, uri: str, resume_dir: Path | None) -> str | None:
    """The run a training lost to a vanished server left in its resume folder, while unfinished on this server."""
    from mlflow.exceptions import MlflowException

    try:
        saved = json.loads((resume_dir / RESUME_RUN_FILE).read_text()) if resume_dir else {}
    except (OSError, ValueError):
        return None
    if not saved.get("run_id") or saved.get("uri") != uri:
        return None
    try:
        run = client.get_run(saved["run_id"])
    except MlflowException:  # deleted from the server
        return None
    if run.info.status == "FINISHED" or run.info.lifecycle_stage != "active":
        return None
    return run.info.run_id


@contextlib.contextmanager
def training_run(params: Params, architecture: str, data_hash: str, data_info: dict,
                 resume_dir: Path | None = None) -> Iterator[NullRun | TrainingRun]:
    """Open the MLflow run for a training of `architecture` (the name train resolved, logged as `model.name`)
    and close it FINISHED, FAILED or KILLED, whatever happens. `data_info` (preprocess's dataset.json) names the
    data in the run's tags and dataset inputs.

    When the server goes away during training, the run's id is kept in the training's resume folder: the training
    resumed from that folder completes that run instead of opening a second one (unless it was finished or
    deleted meanwhile). A training stopped by a signal or a kill gets a new run, and its own ends KILLED.
    """
    if not params.tracking.enabled:
        yield NullRun()
        return
    import mlflow

    client, experiment_id = connect(params)
    uri = tracking_uri(params)
    resumed = _resumable_run(client, uri, resume_dir)
    mark_orphans_killed(client, experiment_id, keep=resumed)
    if resumed:
        run = mlflow.start_run(run_id=resumed, log_system_metrics=False)
        # This process owns it now: the orphan check of other trainings looks at these two tags.
        client.set_tag(resumed, "host", socket.gethostname())
        client.set_tag(resumed, "pid", str(os.getpid()))
        run_name, run_id = run.info.run_name, resumed
        print(f"resuming MLflow run {run_name} ({run_id})")
    else:
        name_spec = json.dumps(params.model_dump(), sort_keys=True, default=str)
        run_name = (f"{architecture}-{params.train.optimizer.name}-"
                    f"{hashlib.sha256(name_spec.encode()).hexdigest()[:6]}")
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name,
                               tags=run_tags(params, data_hash, data_info), log_system_metrics=False)
        run_id = run.info.run_id
        logged = {**flatten(params.model_dump()), "model.name": architecture}
        client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in logged.items()])
        log_datasets(data_info)

    handle = TrainingRun(client, run_id, uri, run_name)
    status = "FAILED"
    try:
        yield handle
        status = "FINISHED"
    except (KeyboardInterrupt, Terminated):
        status = "KILLED"
        raise
    finally:
        if handle.lost_after is None:
            # The status first: on a server, MLflow prints the run's URL before it writes the status, and that
            # print raises once nobody reads our output (a search worker killed mid-trial), which would leave it
            # RUNNING.
            client.update_run(run_id, status=status)
            with contextlib.suppress(OSError):
                mlflow.end_run(status=status)
            print(f"MLflow run {run_name} ({run_id}) {status} in experiment {params.tracking.experiment!r}")
        else:
            # The server is gone: one try to close the run, not MLflow's minutes of retries. Either way the
            # training resumed from this state reopens it.
            if resume_dir is not None:
                write_json(resume_dir / RESUME_RUN_FILE, {"run_id": run_id, "uri": uri})
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
            with contextlib.suppress(Exception):
                mlflow.end_run(status="FAILED")


def _attached_run(params: Params):
    """(client, run id) of the training's run from run.json, or None when there is nothing to attach to."""
    if not params.tracking.enabled:
        return None
    path = Path(params.paths.run)
    if not path.exists():
        return None
    run_id = json.loads(path.read_text()).get("run_id")
    if not run_id:
        return None
    client, _ = connect(params)
    return client, run_id


def log_evaluation(params: Params, metrics: dict[str, float], files: list[Path]) -> None:
    """Attach test metrics and report files to the training's run; tag its model version and move `champion`."""
    attached = _attached_run(params)
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


def log_files(params: Params, files: list[Path], folder: str) -> None:
    attached = _attached_run(params)
    if attached is not None:
        client, run_id = attached
        for path in files:
            client.log_artifact(run_id, str(path), folder)


def search_runs(params: Params):
    """Every run of the experiment as a pandas DataFrame (MLflow's columns: params.*, metrics.*, tags.*)."""
    import mlflow

    client, experiment_id = connect(params)
    return mlflow.search_runs(experiment_ids=[experiment_id], order_by=["attributes.start_time DESC"])


def log_study(params: Params, study: str, trial_runs: list[str], files: list[Path]) -> str | None:
    """Attach the search report to the study's parent run (created once) and make each trial's run its child."""
    if not params.tracking.enabled:
        return None
    client, experiment_id = connect(params)
    tags = {SEARCH_TAGS["SEARCH_STUDY"]: study, "search.role": "study"}
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())

    def parents():
        return client.search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time ASC"])

    with store_lock(tracking_uri(params)):
        found = parents()
        if not found:
            client.set_terminated(client.create_run(experiment_id, run_name=f"study {study}", tags=tags).info.run_id)
            found = parents()
            for extra in found[1:]:  # another worker created one at the same moment: keep the oldest
                client.delete_run(extra.info.run_id)
    parent = found[0].info.run_id
    for run_id in trial_runs:
        client.set_tag(run_id, "mlflow.parentRunId", parent)
    for path in files:
        client.log_artifact(parent, str(path), "search")
    print(f"search report logged to MLflow run {parent} (study {study!r})")
    return parent
