"""The MLflow run of one training: opened by train, its epochs logged live, its model logged at the end.

One MLflow run per trained model: train opens it (`training_run`), evaluate and plots attach to it through the
run id in {paths.run} (store.attached_run). MLflow's own exit hook marks an active run FINISHED and it leaves a
SIGTERMed run RUNNING, so the status is set here explicitly: FINISHED, FAILED (an exception) or KILLED (Ctrl-C, or
SIGTERM, which stages/core/entry.py raises as Terminated; or a run whose process vanished).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from stages.core.datasets import class_names
from stages.core.errors import PipelineError, Terminated
from stages.core.files import write_json
from stages.core.records import history_file, read_history, read_run
from stages.core.schema import PARAMS_FILE, Params, flatten
from stages.core.tracking.store import (
    SPLIT_CONTEXTS,
    attached_run,
    check_server,
    check_writes,
    connect,
    dataset_digest,
    dataset_name,
    full_store_is_an_error,
    refused_is_an_error,
    server_loss,
    store_is_full,
    tracking_uri,
)
from stages.core.tracking.versions import log_tensor_model, mark_dead_versions, registered_name

RESUME_RUN_FILE = "mlflow_run.json"  # in a resume folder: the run the server lost, for the resumed training
# A search worker names its study and trial to the training it starts (through DVC) in these variables.
SEARCH_TAGS = {"STAGES_SEARCH_STUDY": "search.study", "STAGES_SEARCH_TRIAL": "search.trial"}
# Not the model's quantities: MLflow's UI shows `system/` metrics in their own section, away from the model's charts.
SYSTEM_METRICS = {"seconds": "system/epoch_seconds", "train_seconds": "system/train_seconds",
                  "epochs_run": "system/epochs_run"}


def check_tracking(params: Params, dataset: str | None = None) -> None:
    """store.check_writes for a training: the experiment and the tensor and image models of `dataset` (which the
    register stage writes; it checks the exports' models too)."""
    check_writes(params, [registered_name(params, dataset, kind) for kind in ("", "images")] if dataset else [])


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
    # The split sizes describe the data, not the model: tags (`python -m stages.compare` shows them), not metrics.
    tags.update({f"dataset.{split}_images": str(entry["images"]) for split, entry in data_info["splits"].items()})
    return tags


def image_dataset_class():
    """MLflow's NumPy dataset with the profile an image classifier's user looks for (made here: mlflow is lazy)."""
    from mlflow.data.numpy_dataset import NumpyDataset

    class ImageDataset(NumpyDataset):
        """Schema from one image and its label (shape and dtype); profile from preprocess's record of the split."""

        def __init__(self, *, profile: dict, **kwargs):
            super().__init__(**kwargs)
            self._image_profile = profile

        @property
        def profile(self):
            return self._image_profile

    return ImageDataset


def split_datasets(data_info: dict) -> dict[str, object]:
    """The three splits as MLflow datasets: name, digest (the first 36 characters of the split's content sha256,
    which the input's tag `sha256` holds in full), source, a schema and a profile (images, shape, classes).

    Built from dataset.json and the image format, without the arrays: MLflow's own digest and profile would read
    them, and evaluate links its test metrics to the same name and digest from the same record.
    """
    import numpy as np
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    image_dataset = image_dataset_class()
    classes = len(class_names(data_info["dataset"]))
    image, label = np.zeros((1, 28, 28, 1), np.float32), np.zeros((1,), np.int64)  # what preprocess writes
    datasets = {}
    for split, entry in data_info["splits"].items():
        with warnings.catch_warnings():  # a relative path "can be interpreted in multiple ways": all local
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(entry["origin"])
        profile = {"images": int(entry["images"]), "image_shape": list(image.shape[1:]), "classes": classes,
                   "dtype": str(image.dtype)}
        datasets[split] = image_dataset(features=image, targets=label, source=source, profile=profile,
                                        name=dataset_name(data_info, split), digest=dataset_digest(data_info, split))
    return datasets


def log_datasets(data_info: dict) -> dict[str, object]:
    """The splits (three; four with data.own) as dataset inputs of the active run: the runs table's Dataset column."""
    import mlflow

    datasets = split_datasets(data_info)
    for split, dataset in datasets.items():
        entry = data_info["splits"][split]
        mlflow.log_input(dataset, context=SPLIT_CONTEXTS[split],
                         tags={"sha256": entry["sha256"], "images": str(entry["images"])})
    return datasets


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
            mark_dead_versions(client, run.info.run_id, "KILLED")
            print(f"marked MLflow run {run.info.run_id} KILLED: its process {pid} is gone")
        except PermissionError:
            pass


class NullRun:
    """Stands in for a run when tracking is off."""

    def log_epoch(self, epoch: int, logs: dict) -> bool:
        return True

    def raise_if_lost(self) -> None:
        pass

    check_heartbeat = raise_if_lost

    def log_training(self, params, model, result, example, data_info=None, temperature: float = 1.0) -> dict:
        return {"run_id": None}


# The heartbeat reads every few seconds whatever the epoch's length; two misses in a row make a loss (one 5xx may
# be a blip): a lost server or database is noticed within about 2 * HEARTBEAT_SECONDS and the next batch.
HEARTBEAT_SECONDS = 3
LOSSES = {"gone": ("the server is gone", "start the server"),
          "database": ("the server answers but its database is down", "start its database"),
          "failing": ("the server answers but fails", "see the server's log")}


class TrainingRun:
    def __init__(self, client, run_id: str, uri: str, run_name: str):
        self.client, self.run_id, self.uri, self.run_name = client, run_id, uri, run_name
        self.lost_after: int | None = None  # the last epoch logged before the server went away
        self.logged = 0  # epochs logged by this process
        self.loss: tuple[str, str] | None = None  # server_loss's answer, from the heartbeat or a failed log call
        self.stopped = threading.Event()

    def start_heartbeat(self) -> None:
        """A thread beside the epochs that reads from the server every HEARTBEAT_SECONDS; the batches check what it
        found (`check_heartbeat`)."""
        def beat() -> None:
            misses = 0
            while not self.stopped.wait(HEARTBEAT_SECONDS):
                loss = server_loss(self.uri)
                misses = misses + 1 if loss else 0
                if misses >= 2:
                    self.loss = loss
                    return

        threading.Thread(target=beat, name="mlflow-heartbeat", daemon=True).start()

    def check_heartbeat(self) -> None:
        """Between two batches: end the training at once when the heartbeat lost the server (the resume state keeps
        the epochs finished so far)."""
        if self.loss is not None and self.lost_after is None:
            self.lost_after = self.logged
            self.raise_if_lost()

    def log_epoch(self, epoch: int, logs: dict) -> bool:
        """Log one finished epoch (0-based) as it ends; False once the server has gone away (then nothing more)."""
        from mlflow.entities import Metric

        if self.lost_after is not None:
            return False
        stamp = int(time.time() * 1000)
        metrics = [Metric(SYSTEM_METRICS.get(key, key), float(value), stamp, epoch + 1) for key, value in logs.items()]
        try:
            check_server(self.uri)  # seconds, where MLflow's own retries would take minutes
            self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)
        except Exception as error:  # PipelineError from the probe, or whatever MLflow's client raises
            self.loss = server_loss(self.uri) or ("gone", " ".join(str(error).split())[:300])
            self.lost_after = epoch
            return False
        self.logged = epoch + 1
        return True

    def raise_if_lost(self) -> None:
        if self.lost_after is not None:
            what, fix = LOSSES[self.loss[0]]
            raise PipelineError(
                f"MLflow tracking server {self.uri} lost during training: {what} ({self.loss[1]}); run "
                f"{self.run_name} ({self.run_id}) is incomplete there, with epochs up to {self.lost_after} logged. "
                f"The training state is kept: {fix} and run `dvc repro` again to resume the training and complete "
                "that run"
            )

    def log_missed_epochs(self, history) -> None:
        """Log the epochs (rows of the history frame) the server has no record of: a resumed run's lost epochs."""
        from mlflow.entities import Metric

        logged = {metric.step for metric in self.client.get_metric_history(self.run_id, "loss")}
        stamp = int(time.time() * 1000)
        missed = [Metric(SYSTEM_METRICS.get(key, key), float(value), stamp, int(row["epoch"]))
                  for row in history.to_dict("records") if int(row["epoch"]) not in logged
                  for key, value in row.items() if key != "epoch" and value == value]  # NaN: not measured
        for start in range(0, len(missed), 1000):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, metrics=missed[start:start + 1000], synchronous=True)

    def log_training(self, params: Params, model, result: dict, example, data_info: dict,
                     temperature: float = 1.0) -> dict:
        """Log what the training produced: its missed epochs, the model (a LoggedModel of this run, registered by
        the register stage) with the kept epoch's accuracies linked to it, and the results; returns what run.json
        records of the run (with the LoggedModel's id, which evaluate links the test metrics to)."""
        import mlflow

        history = read_history(params.paths)
        self.log_missed_epochs(history)
        self.client.log_batch(self.run_id, params=[
            mlflow.entities.Param("model.parameters", str(result["parameters"])),
        ])
        self.client.set_tag(self.run_id, "precision", result["precision"])
        self.client.set_tag(self.run_id, "replicas", str(result["replicas"]))
        for path in (params.paths.summary, history_file(params.paths)):
            self.client.log_artifact(self.run_id, path, "model_outputs")
        if Path(PARAMS_FILE).exists():
            self.client.log_artifact(self.run_id, PARAMS_FILE)
        info = log_tensor_model(model, result["architecture"], example, self.uri, temperature)
        self.link_kept_epoch(info.model_id, history, result["kept_epoch"], data_info)
        # After the model: MLflow copies the run's metrics logged so far onto the LoggedModel, whose page should
        # list the model's scores, not how long it trained.
        for key in ("train_seconds", "epochs_run"):
            self.client.log_metric(self.run_id, SYSTEM_METRICS[key], float(result[key]))
        self.client.log_metric(self.run_id, "best_val_accuracy", float(result["best_val_accuracy"]))
        return {"run_id": self.run_id, "experiment": params.tracking.experiment, "model_uri": info.model_uri,
                "model_id": info.model_id, "experiment_id": self.client.get_run(self.run_id).info.experiment_id}

    def link_kept_epoch(self, model_id: str, history, kept_epoch: int | None, data_info: dict) -> None:
        """The kept epoch's training and validation accuracy on the LoggedModel, each with its split's dataset:
        MLflow's model page lists the datasets its metrics were measured on (evaluate adds the test split's)."""
        if kept_epoch is None:
            return
        row = history[history["epoch"] == kept_epoch].iloc[0]
        # `val_accuracy` adds its kept point to the epoch curve again (same step, same value): the curve looks the
        # same, and the model page shows the name people compare runs by.
        for split, column in (("train", "accuracy"), ("val", "val_accuracy")):
            if row[column] == row[column]:  # NaN: not measured
                self.client.log_metric(self.run_id, f"{split}_accuracy", float(row[column]), step=kept_epoch,
                                       model_id=model_id, dataset_name=dataset_name(data_info, split),
                                       dataset_digest=dataset_digest(data_info, split))


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


# During the epochs a tracking server that stops answering (or whose database stops: it answers 503) is noticed
# in seconds, not after MLflow's default minutes of retries; MLflow reads these at each request. Backoff 1 s, no
# jitter, 2 retries, 10 s per request: ~2 s for a dead database, ~30 s for a hung one. Then the training stops
# after its epoch's state is saved and resumes into the same run later (TrainingRun.log_epoch).
FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


@contextlib.contextmanager
def fail_fast() -> Iterator[None]:
    """FAIL_FAST for the block (what the user set wins), then the environment as it was."""
    saved = {key: os.environ.get(key) for key in FAIL_FAST}
    os.environ.update({key: value for key, value in FAIL_FAST.items() if saved[key] is None})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)


@contextlib.contextmanager
def training_run(params: Params, architecture: str, data_hash: str, data_info: dict,
                 resume_dir: Path | None = None) -> Iterator[NullRun | TrainingRun]:
    """The run of `_training_run`; a store that cannot grow (a full disk) or refuses us (HTTP 403) ends the stage
    with one line."""
    uri = tracking_uri(params)
    with full_store_is_an_error(uri), refused_is_an_error(uri, params.tracking.experiment), \
            _training_run(params, architecture, data_hash, data_info, resume_dir) as handle:
        yield handle


@contextlib.contextmanager
def _training_run(params: Params, architecture: str, data_hash: str, data_info: dict,
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
        mlflow.set_experiment(experiment_id=experiment_id)  # else start_run refuses it after another store's run
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
        # Not paths.*: where files live is no knob of a run (params.yaml, logged whole as an artifact, has them).
        logged = {**{key: value for key, value in flatten(params.model_dump()).items() if not key.startswith("paths.")},
                  "model.name": architecture}
        client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in logged.items()])
        log_datasets(data_info)

    handle = TrainingRun(client, run_id, uri, run_name)
    handle.start_heartbeat()
    status = "FAILED"
    try:
        yield handle
        status = "FINISHED"
    except (KeyboardInterrupt, Terminated):
        status = "KILLED"
        raise
    finally:
        handle.stopped.set()
        if handle.lost_after is None:
            # The status first: MLflow prints the run's URL before it writes the status, and that print raises
            # once nobody reads our output (a search worker killed mid-trial), which would leave it RUNNING.
            try:
                client.update_run(run_id, status=status)
                if status != "FINISHED":
                    mark_dead_versions(client, run_id, status)
            except Exception as error:
                # A full store cannot take the status either: the error in flight says what happened, and the
                # next training marks this run KILLED.
                if status == "FINISHED" or not store_is_full(error):
                    raise
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


def log_evaluation(params: Params, metrics: dict[str, float], files: list[Path], data_info: dict | None = None
                   ) -> None:
    """Attach test metrics and report files to the training's run (linked to its LoggedModel and, given
    `data_info` (dataset.json), to the test split's dataset, so the model page shows them). A full store is one
    line. (The register stage tags the registered versions with the test accuracy and moves `champion`.)"""
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

    with full_store_is_an_error(tracking_uri(params)):
        for key, value in metrics.items():
            if isinstance(value, int | float):  # not the dataset's name: the run carries it as a tag
                client.log_metric(run_id, key, float(value),
                                  **link("own_test" if key.startswith("own_test") else "test"))
        for path in files:
            client.log_artifact(run_id, str(path), "reports")
