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
import time
from collections.abc import Iterator
from pathlib import Path

from stages.core.errors import PipelineError, Terminated
from stages.core.files import write_json
from stages.core.schema import PARAMS_FILE, Params, flatten
from stages.core.tracking.registry import log_image_model, mark_dead_versions, registered_name
from stages.core.tracking.store import check_server, connect, store_lock, tracking_uri

RESUME_RUN_FILE = "mlflow_run.json"  # in a resume folder: the run the server lost, for the resumed training
# A search worker names its study and trial to the training it starts (through DVC) in these variables.
SEARCH_TAGS = {"STAGES_SEARCH_STUDY": "search.study", "STAGES_SEARCH_TRIAL": "search.trial"}
# MLflow caps a dataset digest at 36 characters; the full sha256 goes in the input's tag of this name.
DIGEST_LENGTH = 36
SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}


def check_tracking(params: Params) -> None:
    """Before any slow work: fail when tracking is on and its server is down, failing or refuses us."""
    if params.tracking.enabled:
        check_server(tracking_uri(params))


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

    def log_training(self, params, model, result, example, image_model=None, dataset=None) -> dict:
        return {"run_id": None}


class TrainingRun:
    def __init__(self, client, run_id: str, uri: str, run_name: str):
        self.client, self.run_id, self.uri, self.run_name = client, run_id, uri, run_name
        self.lost_after: int | None = None  # the last epoch logged before the server went away

    def log_epoch(self, epoch: int, logs: dict) -> bool:
        """Log one finished epoch (0-based) as it ends; False once the server has gone away (then nothing more)."""
        from mlflow.entities import Metric

        if self.lost_after is not None:
            return False
        stamp = int(time.time() * 1000)
        metrics = [Metric(key, float(value), stamp, epoch + 1) for key, value in logs.items()]
        try:
            check_server(self.uri)  # seconds, where MLflow's own retries would take minutes
            self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)
        except Exception:  # PipelineError from the probe, or whatever MLflow's client raises
            self.lost_after = epoch
            return False
        return True

    def raise_if_lost(self) -> None:
        if self.lost_after is not None:
            raise PipelineError(
                f"MLflow tracking server {self.uri} went away during training: run {self.run_name} "
                f"({self.run_id}) is incomplete there, with epochs up to {self.lost_after} logged. "
                "The training state is kept: start the server and run `dvc repro` again to resume the "
                "training and complete that run"
            )

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

    def log_training(self, params: Params, model, result: dict, example, image_model, dataset: str) -> dict:
        """Log the trained model and its results, and the same model behind `image_model` (the pyfunc class of
        stages/reading/image_model.py) framing images as `dataset` does; returns what run.json records of the run."""
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
        if Path(PARAMS_FILE).exists():
            self.client.log_artifact(self.run_id, PARAMS_FILE)
        signature = infer_signature(example, model.predict(example, verbose=0))
        # mlflow.keras.log_model writes the input example before creating its folder (MLflow 3.17); the
        # TensorFlow flavour saves the same Keras 3 model and gets it right.
        with store_lock(self.uri):
            info = mlflow.tensorflow.log_model(
                model, name="model", signature=signature, input_example=example,
                registered_model_name=registered_name(params, dataset),
                # Given explicitly: inferring them reloads the model in a subprocess (another TensorFlow start).
                pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}",
                                  f"mlflow=={mlflow.__version__}"],
            )
        log_image_model(params, self.uri, image_model, dataset)
        return {
            "run_id": self.run_id, "experiment": params.tracking.experiment, "model_uri": info.model_uri,
            "registered_model": registered_name(params, dataset),
            "model_version": str(info.registered_model_version) if info.registered_model_version else None,
        }


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
            if status != "FINISHED":
                mark_dead_versions(client, run_id, status)
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
