"""The MLflow store: where it is, whether its server answers, the experiment, and runs attached to by id.

The default store is MLflow's SQLite file `mlflow.db` at the project root with artifacts in `mlartifacts/` beside
it; runs made by `dvc exp run --temp/--queue` in a temporary copy still land there because DVC sets DVC_ROOT to the
original repository. `tracking.uri` or MLFLOW_TRACKING_URI selects a tracking server instead.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import json
import logging
import os
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

from stages.core.errors import DISK_FULL, PipelineError
from stages.core.files import disk_full_message, project_root
from stages.core.records import read_run
from stages.core.schema import Params
from stages.core.tracking.views import view_tag

SQLITE_TIMEOUT_SECONDS = 60
HEALTH_TIMEOUT_SECONDS = 10  # a busy server's first request opens its store
# MLflow 3's UI opens an experiment on the page its kind names; without the tag it shows the GenAI overview.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow caps a dataset digest at 36 characters; the full sha256 goes in the input's tag `sha256`.
DIGEST_LENGTH = 36
SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "test", "own_test": "own_test"}


def dataset_name(data_info: dict, split: str) -> str:
    """A split's MLflow dataset name from preprocess's dataset.json, e.g. mnist-train or mnist_10k-held-out."""
    return f"{data_info['dataset']}-{data_info['splits'][split]['name']}"


def dataset_digest(data_info: dict, split: str) -> str:
    return data_info["splits"][split]["sha256"][:DIGEST_LENGTH]


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


# What SQLite reports when its file cannot grow: a full disk or quota ("database or disk is full") or a file-size
# limit ("disk I/O error": the write failed with EFBIG).
SQLITE_FULL = ("database or disk is full", "disk I/O error")


def store_is_full(error: BaseException) -> bool:
    """Whether `error` (or what it wraps: MLflow wraps SQLAlchemy, which wraps sqlite3) is a write refused for
    lack of space."""
    return full_disk_message(error, "") is not None


def full_disk_message(error: BaseException, uri: str) -> str | None:
    """The one line for a write refused for lack of space somewhere in `error`'s chain: a file it names, or else
    the store at `uri` (SQLite names no file)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return disk_full_message(error.filename or sqlite_path(uri), error.errno)
        reason = next((text for text in SQLITE_FULL if text in str(error)), None)
        if reason:
            return disk_full_message(sqlite_path(uri), errno.ENOSPC).replace(os.strerror(errno.ENOSPC), reason, 1)
        error = error.__cause__ or error.__context__
    return None


def sqlite_path(uri: str) -> str:
    return uri.removeprefix("sqlite:///").split("?")[0] if _is_local_sqlite(uri) else uri


def _not_a_full_store(record: logging.LogRecord) -> bool:
    """MLflow logs a SQLite error with its traceback before raising it; a full store is reported in one line."""
    return not (record.exc_info and record.exc_info[1] is not None and store_is_full(record.exc_info[1]))


logging.getLogger("mlflow.store.db.utils").addFilter(_not_a_full_store)


@contextlib.contextmanager
def full_store_is_an_error(uri: str) -> Iterator[None]:
    """A write refused for lack of space (MLflow's SQLite file, an artifact copy) ends the stage with one line, not
    the four tracebacks of MLflow, SQLAlchemy and sqlite3."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as error:
        message = full_disk_message(error, uri)
        if message is None:
            raise
        raise PipelineError(message) from None


def ask(uri: str, timeout: float = HEALTH_TIMEOUT_SECONDS) -> None:
    """One cheap read that basic auth protects, with the credentials MLflow's client would send; urllib's errors
    as they come."""
    request = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    elif user or password:
        credentials = base64.b64encode(f"{user or ''}:{password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {credentials}")
    urllib.request.urlopen(request, timeout=timeout).close()


# What MLflow's 500 says when its backend store cannot be reached (SQLAlchemy's OperationalError from psycopg).
DATABASE_DOWN = ("OperationalError", "psycopg", "connection to server", "database")


def server_loss(uri: str) -> tuple[str, str] | None:
    """What one read says of a server that was answering: None while it answers (or is only slow, or refuses us),
    ("gone", why) when nothing takes the connection, ("database", why) for an HTTP 5xx whose body names its backend
    store, ("failing", why) for any other 5xx. A local store (SQLite): None."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        ask(uri)
    except urllib.error.HTTPError as error:
        if error.code < 500:
            return None
        body = error.read(2000).decode(errors="replace")
        with contextlib.suppress(ValueError, AttributeError):
            body = json.loads(body).get("message", body)
        detail = " ".join(body.split())[:300] or f"HTTP {error.code}"
        return ("database" if any(word.lower() in body.lower() for word in DATABASE_DOWN) else "failing"), detail
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, TimeoutError):
            return None  # a busy server; the next epoch's log call bounds a hung one
        return "gone", str(reason)
    return None


def check_server(uri: str) -> None:
    """Fail in seconds, before any training, when a tracking server is down, failing or refuses our credentials.

    MLflow would retry for minutes. `/health` answers without credentials, so the probe asks an endpoint that
    basic auth protects, with the credentials MLflow's client would send.
    """
    if not uri.startswith(("http://", "https://")):
        return
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    try:
        ask(uri)
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


def check_writes(params: Params, models: list[str] | tuple[str, ...] = ()) -> None:
    """The one check every stage that writes to MLflow (train, evaluate, plots, register) makes first, before any
    computation or MLflow write: with tracking on, the server answers, takes our credentials and grants us more than
    READ on the experiment (and on `models`, the registered models the stage writes)."""
    if params.tracking.enabled:
        uri = tracking_uri(params)
        check_server(uri)
        check_write_access(uri, params.tracking.experiment, list(models))


READ_ONLY = ("READ", "NO_PERMISSIONS")


def check_write_access(uri: str, experiment: str, models: list[str]) -> None:
    """With basic auth, ask the server for our own permission on what the training writes: a READ-only grant is
    one line now, not an HTTP 403 after the training. No grant of our own (the server's default applies) or a
    server without auth: nothing to check here (a 403 later is one line too: `refused`)."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if not user or not uri.startswith(("http://", "https://")):
        return
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client
    from starlette.exceptions import StarletteDeprecationWarning

    with warnings.catch_warnings():
        # MLflow's auth package imports its FastAPI app, which imports starlette.middleware.wsgi: deprecated since
        # Starlette 1.0 (upstream's to move to a2wsgi), news to no one who trains; any other warning still shows.
        warnings.filterwarnings("ignore", category=StarletteDeprecationWarning, module=r"mlflow\.server\.fastapi_app")
        client, auth = mlflow.MlflowClient(uri, uri), get_app_client("basic-auth", tracking_uri=uri)
    resources = []
    with contextlib.suppress(MlflowException):
        found = client.get_experiment_by_name(experiment)
        if found is not None:  # else this user creates it, and may write to what they create
            resources.append(("experiment", found.experiment_id, f"experiment {experiment!r}"))
    for name in models:
        with contextlib.suppress(MlflowException):
            client.get_registered_model(name)
            resources.append(("registered_model", name, f"registered model {name!r}"))
    for kind, key, what in resources:
        try:
            permission = auth.get_user_permission(user, kind, key).permission
        except MlflowException:
            continue
        if permission in READ_ONLY:
            raise PipelineError(f"MLflow user {user!r} may not write to {what} on {uri} (permission {permission}): "
                                "ask the server's admin for EDIT on it, or set tracking.enabled: false")


@contextlib.contextmanager
def refused_is_an_error(uri: str, experiment: str) -> Iterator[None]:
    """An HTTP 403 from the server (no write access) is one line naming the user, the experiment and the grant."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as error:
        if error.error_code != "PERMISSION_DENIED":
            raise
        user = os.environ.get("MLFLOW_TRACKING_USERNAME", "(no user)")
        raise PipelineError(f"MLflow tracking server {uri} refused user {user!r} a write in experiment "
                            f"{experiment!r}: {error.message.splitlines()[0]}; ask its admin for EDIT on that "
                            "experiment (and its registered models), or set tracking.enabled: false") from None


def connect(params: Params):
    """Point MLflow at the store and return (client, experiment id), creating the experiment once."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(params)
    check_server(uri)
    # "Creating initial MLflow database tables...": a first run's INFO, not news about this run.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # MLflow also exports the URI to os.environ; restore it so the user's setting keeps its meaning.
    if user_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_uri
    with store_lock(uri), full_store_is_an_error(uri):
        try:
            # In the lock: the client creates (migrates) a new SQLite store, which two first runs must not race.
            client = mlflow.MlflowClient(uri, uri)
            return client, experiment_id(client, params.tracking.experiment, uri)
        except MlflowException as error:
            if store_is_full(error):
                raise
            raise PipelineError(f"MLflow tracking store {uri} failed: {error.message.splitlines()[0]}") from None


def experiment_id(client, name: str, uri: str) -> str:
    """The experiment's id, created when needed, with the tags the project sets on it (its kind, its saved view),
    added or brought up to date where missing or old; another process may do either first."""
    from mlflow.exceptions import MlflowException

    wanted = dict([(EXPERIMENT_KIND_TAG, EXPERIMENT_KIND), view_tag()])
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = (project_root() / "mlartifacts").as_uri() if _is_local_sqlite(uri) else None
        try:
            return client.create_experiment(name, artifact_location=location, tags=wanted)
        except MlflowException:
            experiment = client.get_experiment_by_name(name)  # another process created it first
    for key, value in wanted.items():
        if experiment.tags.get(key) == value:
            continue
        try:  # made before the project set it, or by hand
            client.set_experiment_tag(experiment.experiment_id, key, value)
        except MlflowException:
            # Two runs setting it at once collide on the tag's key in the server's database; one wins.
            if client.get_experiment(experiment.experiment_id).tags.get(key) != value:
                raise
    return experiment.experiment_id


def attached_run(params: Params):
    """(client, run id) of the training's run from run.json, or None when there is nothing to attach to."""
    if not params.tracking.enabled:
        return None
    record = read_run(params.paths, missing_ok=True)
    run_id = record.run_id if record else None
    if not run_id:
        return None
    client, _ = connect(params)
    return client, run_id


def log_files(params: Params, files: list[Path], folder: str) -> None:
    attached = attached_run(params)
    if attached is not None:
        client, run_id = attached
        with full_store_is_an_error(tracking_uri(params)):
            for path in files:
                client.log_artifact(run_id, str(path), folder)


def search_runs(params: Params):
    """Every run of the experiment as a pandas DataFrame (MLflow's columns: params.*, metrics.*, tags.*)."""
    import mlflow

    client, experiment_id = connect(params)
    return mlflow.search_runs(experiment_ids=[experiment_id], order_by=["attributes.start_time DESC"])


