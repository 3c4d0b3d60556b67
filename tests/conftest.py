"""Fixtures only; what they build on lives in tests/helpers/. Session fixtures are shared by every test that needs
one: one PostgreSQL cluster, one team MLflow server, one sshd, one small trained model, the processed sample."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import servers
from helpers.digits import SPLIT_FILES, train_small_model
from helpers.net import answers, free_port, wait_until
from helpers.params import shrunk_params
from helpers.project import ROOT, copy_project, run_data_stages

from stages.core.datasets import DATASETS, TEST_IMAGES, TEST_LABELS
from stages.core.formats import FORMATS
from stages.core.schema import PARAMS_FILE, Params, read_yaml


def slow_because(fixture_names) -> str | None:
    """The one rule of the `slow` marker: a test is slow when it needs a copy of the project (it runs DVC), a server
    process or a browser, i.e. when one of its fixtures, direct or through another fixture, is `project_copy`, a
    `*_server` or `browser`. Every other test is in the fast layer (`make test-fast`)."""
    return next((name for name in fixture_names
                 if name in ("project_copy", "browser") or name.endswith("_server")), None)


def pytest_configure(config):
    # Started as a background job (`make test &`, nohup), the suite inherits SIGINT ignored, and so would every
    # process it starts (a stage keeps an ignored SIGINT ignored, as a background job should): the tests press
    # Ctrl-C as a terminal does, so the suite takes SIGINT back (a handler, which exec resets to the default).
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items):
    for item in items:
        if slow_because(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def project_copy():
    """copy_project (helpers/project.py): a throwaway git copy of this project where DVC runs. A test that uses it,
    or a fixture built on it, is marked slow."""
    return copy_project


@pytest.fixture(scope="session")
def mnist_10k() -> Path:
    """The folder of the 10,000 real MNIST digits shipped in stages/mnist_10k (the four IDX .gz files)."""
    folder = DATASETS["mnist_10k"].folder
    missing = [name for name in (*SPLIT_FILES["train"], *SPLIT_FILES["test"]) if not (folder / name).is_file()]
    if missing:
        pytest.fail(f"the mnist-10k sample lacks {', '.join(missing)} in {folder}: `git checkout stages/mnist_10k`")
    return folder


@pytest.fixture(autouse=True)
def isolated_process_state(monkeypatch):
    """What a test changes process-wide must not reach the next one: proxies, the Keras dtype policy."""
    for proxy in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)  # the tests' servers are on 127.0.0.1
    keras = sys.modules.get("keras")
    policy = keras.mixed_precision.global_policy() if keras else None
    yield
    keras = sys.modules.get("keras")
    if keras:
        keras.mixed_precision.set_global_policy(policy or "float32")


@pytest.fixture(scope="session")
def raw_params() -> dict:
    """The shipped params.yaml as a plain mapping (never modified: copy it)."""
    return read_yaml(ROOT / PARAMS_FILE)


@pytest.fixture
def make_params(raw_params, tmp_path, mnist_10k):
    """shrunk_params with outputs under this test's tmp_path."""

    def make(**overrides) -> Params:
        return shrunk_params(raw_params, tmp_path, mnist_10k, **overrides)

    return make


@pytest.fixture
def store(tmp_path, monkeypatch):
    """The default store (mlflow.db at the project root), with the project root being tmp_path via DVC_ROOT."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def processed_dir(raw_params, tmp_path_factory, mnist_10k) -> Path:
    """mnist-10k through the real data stages once per session (first 1,000 images)."""
    base = tmp_path_factory.mktemp("pipeline")
    return run_data_stages(shrunk_params(raw_params, base, mnist_10k, preprocess__limit=1000))


@pytest.fixture(scope="session")
def test_digits(mnist_10k):
    """The 2,000 test digits of mnist-10k, uint8 28x28 (white on black)."""
    from stages.core.idx import read_idx

    return read_idx(mnist_10k / TEST_IMAGES)


@pytest.fixture(scope="session")
def test_labels(mnist_10k):
    from stages.core.idx import read_idx

    return read_idx(mnist_10k / TEST_LABELS)


@pytest.fixture(scope="session")
def model_path(tmp_path_factory, mnist_10k) -> Path:
    """One small trained model per session, shared by every test that classifies real digits."""
    return train_small_model(tmp_path_factory.mktemp("model") / "model.keras", mnist_10k)


@pytest.fixture(scope="session")
def model(model_path):
    from stages.core.architectures import load_model

    return load_model(model_path, 10, advice="the session's model should load")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, raw_params, mnist_10k, model_path, processed_dir):
    """The export stage run once, in every format, on the session's model and the 2,000 held-out digits of the
    processed sample, and its files logged as the register stage logs them, MLflow on (a SQLite store beside it, the
    training's run made up): (params, report). The folder holds params.yaml and is the project root while the
    module's tests run."""
    import shutil

    import mlflow
    from helpers.params import write_params

    from stages import export
    from stages.core import records
    from stages.core.files import write_json
    from stages.core.tracking import registry, store

    base = tmp_path_factory.mktemp("export")
    params = shrunk_params(raw_params, base, mnist_10k, tracking__enabled=True, paths__processed=str(processed_dir),
                           tracking__uri=f"sqlite:///{base / 'mlflow.db'}", export__formats=list(FORMATS))
    write_params(base, params)
    Path(params.paths.model).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_path, params.paths.model)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        client = mlflow.MlflowClient(params.tracking.uri)
        experiment = client.create_experiment(params.tracking.experiment, artifact_location=(base / "art").as_uri())
        client, _ = store.connect(params)  # as register does: MLflow's model logging follows the global URI
        run_id = client.create_run(experiment).info.run_id
        client.log_metric(run_id, "system/train_seconds", 12.5)  # as train logs it: no exported model's figure
        client.set_terminated(run_id, "FINISHED")
        write_json(params.paths.run, {"run_id": run_id})
        report = export.run(params)
        info = records.read_dataset_info(params.paths)
        files = {format: records.export_file(params.paths, FORMATS[format].file) for format in params.export.formats}
        registry.log_exports(params, client, run_id, files, report, records.read_split(params.paths, "test")["x"][:2],
                             info["dataset"], info["splits"]["test"]["sha256"])
        yield params, report


@pytest.fixture(scope="session")
def postgresql_server():
    """A throw-away PostgreSQL cluster for the session (see helpers/servers.py)."""
    with servers.postgresql() as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_server(postgresql_server, tmp_path_factory):
    """One MLflow server on PostgreSQL for the session. Tests name their own experiment to keep runs apart."""
    with servers.team_mlflow_server(postgresql_server, tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory):
    """sshd on 127.0.0.1 that lets the current user in with a throw-away key only."""
    with servers.sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture
def model_server(tmp_path):
    """Starts `mlflow models serve` for a model URI (`model_server(uri, tracking_uri)` -> its URL); stopped after."""
    started = []

    def start(model_uri: str, tracking_uri: str) -> str:
        port = free_port()
        log = tmp_path / "serve.log"
        with open(log, "w") as output:
            server = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
                 "--host", "127.0.0.1", "--port", str(port)],
                cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT,
                # MLflow starts `uvicorn` by name: the environment's bin folder is on PATH, as in an activated venv.
                env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                     "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true",
                     "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""},  # the model brings its own copy of `stages`
            )
        started.append(server)
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/ping"), 240, "mlflow models serve", server, log)
        return f"http://127.0.0.1:{port}"

    yield start
    for server in started:
        server.terminate()
        server.wait(timeout=60)
