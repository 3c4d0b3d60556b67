"""The team stack with real servers: MLflow's tracking server on PostgreSQL, basic auth, a DVC remote over SSH."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers.params import TINY
from helpers.project import project_env, project_paths, set_params, sh
from PIL import Image

from stages.core.errors import PipelineError
from stages.core.tracking import registry, store, training, versions

DB_PASSWORD = "db-secret-4711"  # the auth server's database password: never on a command line or on disk


@pytest.fixture(scope="module")
def team_database(postgresql_server) -> str:
    """A database whose owner logs in with a password, as a team's does: its URI holds DB_PASSWORD."""
    return postgresql_server.create_user_database("mlflow_auth", DB_PASSWORD)


@pytest.fixture(scope="module")
def auth_server(team_database, tmp_path_factory):
    """A second server, with MLflow's basic auth (users in its own database), admin password from the environment."""
    from helpers.servers import MlflowServer, require_module

    require_module("flask_wtf", "Flask-WTF (MLflow's basic-auth app)")
    folder = tmp_path_factory.mktemp("mlflow-auth")
    server = MlflowServer(team_database, folder, "--auth",
                          env={"MLFLOW_AUTH_ADMIN_PASSWORD": "team-admin-secret"}).start()
    try:
        yield server
    finally:
        server.stop()


def test_basic_auth_is_checked_before_training(auth_server, make_params, processed_dir, monkeypatch):
    from stages import train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    uri = auth_server.uri
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(PipelineError) as missing:
        store.check_server(uri)
    assert str(missing.value) == (
        f"MLflow tracking server {uri} requires a login and the credentials are missing (HTTP 401): set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to your account on that server")

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    params = make_params(paths__processed=str(processed_dir), tracking__enabled=True, tracking__uri=uri)
    with pytest.raises(PipelineError, match=f"{uri} requires a login and the credentials were refused"):
        train.run(params)
    assert not Path(params.paths.model).parent.exists()

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "team-admin-secret")
    store.check_server(uri)  # the right credentials pass


@pytest.mark.parametrize(("change", "reason"), [
    ({"password": "wrong"}, 'password authentication failed for user "mlflow_auth"'),
    ({"port": 1}, "connection .*refused"),
], ids=["wrong-password", "unreachable"])
def test_a_database_it_cannot_open_ends_the_server_in_seconds(team_database, tmp_path, change, reason):
    from sqlalchemy.engine import make_url

    uri = make_url(team_database).set(**change).render_as_string(hide_password=False)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "stages.server", "--port", "1"], capture_output=True, text=True,
                            env={**os.environ, "MLFLOW_BACKEND_STORE_URI": uri}, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr
    assert re.match(rf"^error: cannot open the backend store postgresql://mlflow_auth:\*\*\*@127\.0\.0\.1:\d+/"
                    rf"mlflow_auth: .*{reason}", result.stderr), result.stderr
    assert "wrong" not in result.stderr and DB_PASSWORD not in result.stderr
    assert elapsed < 15, f"{elapsed:.1f} s"


def as_admin(monkeypatch) -> None:
    """The auth server's admin, by the environment MLflow's client reads; no other tracking setting."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "team-admin-secret")


def test_a_read_only_user_cannot_write_and_is_refused_before_training(auth_server, make_params, monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client


    uri = auth_server.uri
    as_admin(monkeypatch)
    # docs/team.md's recipe: a user, READ on the experiment and on its registered models; EDIT for a writer.
    admin, client = get_app_client("basic-auth", tracking_uri=uri), mlflow.MlflowClient(uri, uri)
    experiment_id = client.create_experiment("readonly")
    model = versions.registered_name(make_params(tracking__model_prefix="readonly-"), "mnist_10k")
    client.create_registered_model(model)
    for user, permission in (("reader", "READ"), ("writer", "EDIT")):
        admin.create_user(user, f"{user}-pass-123456")
        admin.grant_user_permission(user, "experiment", experiment_id, permission)
        admin.grant_user_permission(user, "registered_model", model, permission)

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "writer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "writer-pass-123456")
    run = mlflow.MlflowClient(uri, uri).create_run(experiment_id)

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "reader-pass-123456")
    reader = mlflow.MlflowClient(uri, uri)
    assert reader.get_run(run.info.run_id).info.run_id == run.info.run_id  # reading works
    with pytest.raises(MlflowException) as refused:
        reader.create_run(experiment_id)
    assert refused.value.error_code == "PERMISSION_DENIED"
    with pytest.raises(MlflowException) as refused:
        reader.create_model_version(model, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    assert refused.value.error_code == "PERMISSION_DENIED"

    # What the train stage checks before TensorFlow starts (test_basic_auth_is_checked_before_training runs the
    # stage itself).
    params = make_params(tracking__enabled=True, tracking__uri=uri, tracking__experiment="readonly",
                         tracking__model_prefix="readonly-")
    with pytest.raises(PipelineError) as error:
        training.check_tracking(params, "mnist_10k")
    assert str(error.value) == (
        f"MLflow user 'reader' may not write to experiment 'readonly' on {uri} (permission READ): ask the server's "
        "admin for EDIT on it, or set tracking.enabled: false")
    # READ on the models only: the same line names the model.
    admin_env = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "team-admin-secret"}
    with monkeypatch.context() as admin_session:
        for key, value in admin_env.items():
            admin_session.setenv(key, value)
        admin.revoke_user_permission("reader", "experiment", experiment_id)
        admin.grant_user_permission("reader", "experiment", experiment_id, "EDIT")
    with pytest.raises(PipelineError, match=f"may not write to registered model '{model}'"):
        training.check_tracking(params, "mnist_10k")


def test_checking_a_users_grants_prints_nothing(auth_server):
    """Train's output carries no StarletteDeprecationWarning: MLflow's auth client, which the check uses, imports
    starlette.middleware.wsgi (deprecated upstream). A fresh process: a module imports and warns once."""
    code = "import sys; from stages.core.tracking import store; store.check_write_access(sys.argv[1], 'readonly', [])"
    env = {**os.environ, "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "team-admin-secret"}
    result = subprocess.run([sys.executable, "-c", code, auth_server.uri], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_evaluate_plots_and_register_refuse_a_read_only_user_before_any_work(auth_server, make_params, processed_dir,
                                                                             model_path, monkeypatch):
    """The check train makes (store.check_writes), made first by every stage that writes to MLflow; a 403 that
    comes anyway (no grant of one's own) is one line naming the user, the experiment and the grant."""
    import mlflow
    from mlflow.server import get_app_client

    from stages import evaluate, plots, register

    uri = auth_server.uri
    as_admin(monkeypatch)
    admin, client = get_app_client("basic-auth", tracking_uri=uri), mlflow.MlflowClient(uri, uri)
    experiment_id = client.create_experiment("stages-readonly")
    run = client.create_run(experiment_id)
    for user in ("viewer", "stranger"):
        admin.create_user(user, f"{user}-pass-123456")
    admin.grant_user_permission("viewer", "experiment", experiment_id, "READ")

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "viewer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "viewer-pass-123456")
    params = make_params(paths__processed=str(processed_dir), paths__model=str(model_path), tracking__enabled=True,
                         tracking__uri=uri, tracking__experiment="stages-readonly", tracking__model_prefix="ro-")
    refused = (f"MLflow user 'viewer' may not write to experiment 'stages-readonly' on {uri} (permission READ): ask "
               "the server's admin for EDIT on it, or set tracking.enabled: false")
    for stage in (evaluate, plots, register):
        with pytest.raises(PipelineError) as error:
            stage.run(params)
        assert str(error.value) == refused, stage.__name__
    for output in (params.paths.metrics, params.paths.predictions, params.paths.plots, params.paths.registered):
        assert not Path(output).exists(), output

    with monkeypatch.context() as admin_session:
        admin_session.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        admin_session.setenv("MLFLOW_TRACKING_PASSWORD", "team-admin-secret")
        admin.revoke_user_permission("viewer", "experiment", experiment_id)
        admin.grant_user_permission("viewer", "experiment", experiment_id, "EDIT")
    evaluate.run(params)  # after the grant
    assert Path(params.paths.metrics).exists()

    # No grant of one's own (the server's default READ applies): the write itself is refused, in one line.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "stranger")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "stranger-pass-123456")
    with pytest.raises(PipelineError) as error, store.refused_is_an_error(uri, "stages-readonly"):
        mlflow.MlflowClient(uri, uri).log_metric(run.info.run_id, "test_accuracy", 0.5)
    assert str(error.value).startswith(f"MLflow tracking server {uri} refused user 'stranger' a write in experiment "
                                       "'stages-readonly': ")
    assert str(error.value).endswith("; ask its admin for EDIT on that experiment (and its registered models), or "
                                     "set tracking.enabled: false") and "\n" not in str(error.value)


def auth_files(pid: int) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"mlflow-auth-{pid}-*.ini"))


def test_the_database_password_is_on_no_command_line_and_no_disk(auth_server):
    """Last of the tests on auth_server: it stops the server."""
    wrapper = auth_server.process.pid
    command_lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            command_lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    assert any("stages.server" in line for line in command_lines) and any(" server " in line and "mlflow" in line
                                                                          for line in command_lines)
    assert not [line for line in command_lines if DB_PASSWORD in line]
    # The auth settings file exists while the server runs (its workers read it), owner-only, without the password.
    (config,) = auth_files(wrapper)
    assert config.stat().st_mode & 0o777 == 0o600
    assert DB_PASSWORD not in config.read_text() and "mlflow_auth@" in config.read_text()

    auth_server.stop()  # SIGTERM to the wrapper's process group, as a terminal's Ctrl-C or systemd would
    assert auth_files(wrapper) == []


def server_tree(group: int) -> list:
    """The processes of a server started in its own session (wrapper, `mlflow server`, uvicorn and its workers)."""
    import psutil

    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == group and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def test_a_killed_wrapper_takes_its_server_along_and_the_next_start_succeeds(team_database, tmp_path):
    """SIGKILL of `python -m stages.server` (no cleanup of its own): its tree ends, PGPASSWORD with it; the next
    start on the same port succeeds and removes the auth file left behind."""
    import psutil
    from helpers.net import answers, wait_until
    from helpers.servers import MlflowServer

    env = {"MLFLOW_AUTH_ADMIN_PASSWORD": "team-admin-secret"}
    first = MlflowServer(team_database, tmp_path, "--auth", env=env).start()
    group = first.process.pid
    (config,) = auth_files(group)
    assert any(DB_PASSWORD in str(process.environ()) for process in server_tree(group))
    first.process.kill()
    first.process.wait()
    killed = time.monotonic()
    wait_until(lambda: not server_tree(group), 60, "the killed wrapper's server tree to end")
    print(f"the killed wrapper's tree ended {time.monotonic() - killed:.1f} s after the kill")
    assert not answers(f"{first.uri}/health") and config.exists()

    second = MlflowServer(team_database, tmp_path, "--auth", env=env)
    second.port, second.uri = first.port, first.uri  # was "Address already in use"
    second.start()
    try:
        assert not config.exists(), "the auth file of the killed wrapper was left"
        assert psutil.Process(second.process.pid).is_running()
    finally:
        second.stop()


def test_a_start_removes_only_auth_files_no_live_server_holds(tmp_path):
    """A file whose wrapper is gone but whose server still runs (it holds the file's lock) stays."""
    from helpers.net import wait_until

    from stages import server

    dead = subprocess.Popen(["true"])
    dead.wait()
    held, left = (tmp_path / f"{server.AUTH_FILE_PREFIX}{dead.pid}-{name}.ini" for name in ("held", "left"))
    for path in (held, left):
        path.write_text("[mlflow]\n")
    holder = subprocess.Popen(["flock", "--no-fork", str(held), "sleep", "600"])
    try:
        def locked() -> bool:
            with open(held) as handle:
                return server.in_use(handle)

        wait_until(locked, 60, "flock to hold the file", holder)
        server.remove_stale_auth_files(tmp_path)
        assert held.exists() and not left.exists()
    finally:
        holder.kill()
        holder.wait()
    server.remove_stale_auth_files(tmp_path)
    assert not held.exists()


# Two people on two machines: clones A and B of the project share a bare git origin, a DVC remote over SSH and the
# MLflow server. Tiny runs: a few hundred digits, one epoch of the smallest preset.
TEAM = {  # data.source: the mnist_10k fixture
    **TINY,
    "tracking.experiment": "team",
    "tracking.model_prefix": "team-",  # team-mnist_10k-cnn
}


def run_sh(project: Path, *command: str, **kwargs):
    return sh(project, *command, env=project_env([project]), **kwargs)


@pytest.fixture(scope="module")
def clones(project_copy, tmp_path_factory, mlflow_server, sshd_server, mnist_10k):
    """A has run `dvc repro` and pushed data, models, run-cache and dvc.lock; B has cloned and pulled."""
    base = tmp_path_factory.mktemp("team")
    origin = base / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    (base / "storage").mkdir()
    a = base / "a"
    a.mkdir()
    project_copy(a, {**TEAM, "data.source": str(mnist_10k), "tracking.uri": mlflow_server.uri})
    run_sh(a, "dvc", "remote", "add", "-d", "storage", sshd_server.url(base / "storage"))
    run_sh(a, "dvc", "remote", "modify", "--local", "storage", "keyfile", str(sshd_server.key))
    run_sh(a, "git", "remote", "add", "origin", str(origin))
    run_sh(a, "git", "commit", "-qam", "DVC remote: storage over SSH")
    started = time.monotonic()
    run_sh(a, "dvc", "repro")
    run_sh(a, "dvc", "push", "--run-cache")
    run_sh(a, "git", "commit", "-qam", "Train the baseline")
    run_sh(a, "git", "push", "-q", "origin", "HEAD:main")

    b = base / "b"
    run_sh(base, "git", "clone", "-q", "--branch", "main", str(origin), str(b))
    run_sh(b, "dvc", "remote", "modify", "--local", "storage", "keyfile", str(sshd_server.key))
    run_sh(b, "dvc", "pull", "--run-cache")
    yield SimpleNamespace(a=a, b=b, origin=origin, started=started, server=mlflow_server)


def team_runs(server, **tags) -> list:
    client = server.client()
    experiment = client.get_experiment_by_name(TEAM["tracking.experiment"])
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return [run for run in runs if all(run.data.tags.get(key) == value for key, value in tags.items())]


def test_b_pulls_what_a_made_instead_of_recomputing(clones):
    status = run_sh(clones.b, "dvc", "status", "--json").stdout
    assert json.loads(status) == {}, f"B's workspace differs from dvc.lock after pull: {status}"
    repro = run_sh(clones.b, "dvc", "repro").stdout
    assert "Running stage" not in repro, repro

    # B's pulled model is A's: the same digit gets the same answer, to the last bit of confidence.
    with np.load(project_paths(clones.b).processed / "test.npz") as test:
        image = Image.fromarray((test["x"][0, :, :, 0] * 255).astype(np.uint8))
    answers = []
    for clone in (clones.a, clones.b):
        image.save(clone / "digit.png")
        answers.append(json.loads(run_sh(clone, "python", "-m", "stages.predict", "--json", "digit.png").stdout))
    assert answers[0]["predicted"] == answers[1]["predicted"]
    assert answers[0]["confidence"] == answers[1]["confidence"]

    trained_on = run_sh(clones.a, "git", "rev-parse", "HEAD~1").stdout.strip()
    [run] = team_runs(clones.server, **{"git.commit": trained_on})
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics


def epoch_steps(client, run_id: str, key: str) -> list[int]:
    """The steps of a run's epoch curve. val_accuracy holds the kept epoch's point twice (the second linked to the
    LoggedModel; MLflow's history does not say which), so one repeated step is taken out, never more."""
    steps = sorted(m.step for m in client.get_metric_history(run_id, key))
    if key == "val_accuracy":
        repeated = sorted(step for step in set(steps) if steps.count(step) > 1)
        assert len(repeated) == 1, steps
        steps.remove(repeated[0])
    return steps


def exp_metrics(project: Path) -> dict[str, dict]:
    """{experiment name: its metrics} from `dvc exp show --json`, whatever its nesting."""
    found: dict[str, dict] = {}

    def walk(node):
        if isinstance(node, dict):
            if node.get("name") and isinstance(node.get("data"), dict):
                metrics = {}
                for entry in (node["data"].get("metrics") or {}).values():
                    metrics.update(entry.get("data") or {})
                found[node["name"]] = metrics
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(run_sh(project, "dvc", "exp", "show", "--json").stdout))
    return found


def ran_experiment(output: str) -> str:
    return re.search(r"Ran experiment\(s\): (\S+)", output).group(1)


def test_an_experiment_travels_from_a_to_b_through_origin(clones):
    name = ran_experiment(run_sh(clones.a, "dvc", "exp", "run", "-S", "train.optimizer.name=sgd").stdout)
    run_sh(clones.a, "dvc", "exp", "push", "origin", name)

    run_sh(clones.b, "dvc", "exp", "pull", "origin", name)
    assert "test_accuracy" in exp_metrics(clones.b)[name]
    run_sh(clones.b, "dvc", "exp", "apply", name)
    run_sh(clones.b, "dvc", "pull")
    try:
        assert json.loads(run_sh(clones.b, "dvc", "status", "--json").stdout) == {}
        assert (project_paths(clones.b).model).is_file()
        [run] = team_runs(clones.server, **{"dvc.exp_name": name})
        assert run.info.status == "FINISHED" and run.data.params["train.optimizer.name"] == "sgd"
        assert run.data.tags["git.commit"] == run_sh(clones.a, "git", "rev-parse", "HEAD").stdout.strip()
    finally:
        run_sh(clones.b, "git", "reset", "-q", "--hard")
        run_sh(clones.b, "dvc", "checkout", "--force")


@pytest.mark.timeout(1500)  # three trainings on two cores
def test_queued_runs_and_a_teammate_train_on_one_server_at_once(clones):
    optimizers = ["adam", "sgd"]  # 2 epochs: not the baseline, which the run-cache restores
    queued = {}
    for optimizer in optimizers:
        output = run_sh(clones.a, "dvc", "exp", "run", "--queue", "-S", f"train.optimizer.name={optimizer}",
                        "-S", "train.epochs=2").stdout
        queued[re.search(r"Queued experiment '([^']+)'", output).group(1)] = optimizer
    # `dvc queue start` returns once its workers run; they keep its output pipes open, so no pipes here.
    subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=clones.a, env=project_env([clones.a]), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    try:
        teammate = ran_experiment(run_sh(clones.b, "dvc", "exp", "run", "-S", "train.optimizer.name=nadam",
                                         "-S", "train.epochs=2").stdout)
        deadline = time.monotonic() + 1200
        while True:
            status = run_sh(clones.a, "dvc", "queue", "status").stdout
            if not any(state in status for state in ("Queued", "Running")):
                break
            assert time.monotonic() < deadline, status
            time.sleep(2)
    finally:
        sh(clones.a, "dvc", "queue", "stop", "--kill", check=False)
    assert status.count("Success") == len(optimizers), status

    expected = {**queued, teammate: "nadam"}
    reported = {**exp_metrics(clones.a), **exp_metrics(clones.b)}
    client = clones.server.client()
    hashes = set()
    for name, optimizer in expected.items():
        [run] = team_runs(clones.server, **{"dvc.exp_name": name})
        assert run.info.status == "FINISHED", (name, run.info.status)
        assert run.data.params["train.optimizer.name"] == optimizer
        assert run.data.metrics["test_accuracy"] == pytest.approx(reported[name]["test_accuracy"], abs=1e-9)
        for key in ("loss", "val_accuracy"):
            assert epoch_steps(client, run.info.run_id, key) == [1, 2], name
        hashes.add(run.data.tags["data.sha256"])
    runs = team_runs(clones.server)
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert len(hashes | {run.data.tags["data.sha256"] for run in runs}) == 1, "same data, same hash, A and B"

    name = f"{TEAM['tracking.model_prefix']}mnist_10k-cnn"
    versions = client.search_model_versions(f"name = '{name}'")
    best = max(float(version.tags["test_accuracy"]) for version in versions if "test_accuracy" in version.tags)
    champion = client.get_model_version_by_alias(name, "champion")
    assert float(champion.tags["test_accuracy"]) == best


def test_a_teammate_reuses_queued_runs_instead_of_retraining(clones):
    """docs/team.md's two commands after the queue above: A pushes its experiments with the run-cache, and B's
    `dvc exp run --pull` with the params of one of them restores every stage from it, training nothing."""
    queued = {name: metrics for name, metrics in exp_metrics(clones.a).items() if "test_accuracy" in metrics}
    run_sh(clones.a, "dvc", "exp", "push", "origin", "--all-commits", "--run-cache")
    try:
        output = run_sh(clones.b, "dvc", "exp", "run", "--pull", "-S", "train.optimizer.name=sgd",
                        "-S", "train.epochs=2").stdout
        assert "Running stage" not in output and "Stage 'train' is cached - skipping run" in output, output
        reached = json.loads((project_paths(clones.b).metrics).read_text())["test_accuracy"]
        assert reached in {metrics["test_accuracy"] for metrics in queued.values()}, (reached, queued)
    finally:
        run_sh(clones.b, "git", "reset", "-q", "--hard")
        run_sh(clones.b, "dvc", "checkout", "--force")


def test_champion_ends_on_the_best_version_when_evaluations_race(mlflow_server, make_params, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = mlflow_server.client()
    name, accuracies = "race-mnist-cnn", [0.91, 0.97, 0.93, 0.95, 0.96, 0.92]
    experiment_id = client.create_experiment("race")
    client.create_registered_model(name)
    evaluations = []
    for index, accuracy in enumerate(accuracies):
        run = client.create_run(experiment_id)
        client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
        run_file = tmp_path / f"run-{index}.json"
        run_file.write_text(json.dumps({"run_id": run.info.run_id}))
        params = make_params(paths__run=str(run_file), tracking__enabled=True, tracking__uri=mlflow_server.uri,
                             tracking__experiment="race", tracking__model_prefix="race-")
        evaluations.append((params, accuracy))
    start = threading.Barrier(len(evaluations))

    def evaluate(evaluation):
        params, accuracy = evaluation
        start.wait()
        client, run_id = store.attached_run(params)
        registry.crown(client, params, run_id, "mnist", accuracy, "same")

    with ThreadPoolExecutor(len(evaluations)) as pool:
        list(pool.map(evaluate, evaluations))
    champion = client.get_model_version_by_alias(name, "champion")
    assert float(champion.tags["test_accuracy"]) == max(accuracies)


def test_a_database_stopped_mid_epoch_ends_the_training_in_seconds_and_it_resumes(
        mlflow_server, postgresql_server, make_params, processed_dir, monkeypatch, capsys):
    """PostgreSQL stops under a training whose epoch lasts minutes (each batch waits once the database is down):
    the heartbeat ends it at a batch of that epoch, naming the database; the state resumes after the restart."""
    import keras

    from stages import train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = make_params(paths__processed=str(processed_dir), train__epochs=2, train__batch_size=4,
                         model__architecture="single_conv", tracking__enabled=True,
                         tracking__uri=mlflow_server.uri, tracking__experiment="heartbeat")
    steps = train.steps_per_epoch(len(np.load(Path(processed_dir) / "train.npz")["x"]), 4)
    stopped = {}

    class StopTheDatabase(keras.callbacks.Callback):
        """After the first epoch is logged: stop PostgreSQL, then make every batch of the next epoch slow."""

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                postgresql_server.executor.stop()
                stopped.update(at=time.monotonic(), batches=0)

        def on_train_batch_begin(self, batch, logs=None):
            if stopped:
                stopped["batches"] += 1
                time.sleep(1)  # the epoch would last `steps` seconds at least

    try:
        with pytest.raises(PipelineError) as lost:
            train.run(params, extra_callbacks=[StopTheDatabase()])
        seconds = time.monotonic() - stopped["at"]
    finally:
        postgresql_server.start()
    with capsys.disabled():  # the measurement, for whoever runs it with -s
        print(f"\nnoticed {seconds:.1f} s after PostgreSQL stopped, after {stopped['batches']} of {steps} batches: "
              f"{lost.value}")
    assert stopped["batches"] < steps, "the loss was noticed only at the epoch's end"
    message = str(lost.value)
    assert "\n" not in message
    assert message.startswith(f"MLflow tracking server {mlflow_server.uri} lost during training: the server answers "
                              "but its database is down (")
    assert "is incomplete there, with epochs up to 1 logged" in message and "start its database" in message

    capsys.readouterr()
    train.run(params)
    assert "resuming after epoch 1" in capsys.readouterr().out


def test_server_gone_mid_training_then_resumed_into_the_same_run(clones, postgresql_server):
    server, a = clones.server, clones.a
    # Small batches and a bigger model: epochs of seconds, so the server dies between two of them.
    set_params(a, {"train.epochs": 4, "train.batch_size": 16, "model.architecture": "lenet"})
    client = server.client()
    experiment_id = client.get_experiment_by_name(TEAM["tracking.experiment"]).experiment_id
    training = subprocess.Popen(["dvc", "repro"], cwd=a, env=project_env([a]), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while True:
            assert training.poll() is None, training.stdout.read()[-3000:]
            assert time.monotonic() < deadline
            running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
            if running and client.get_metric_history(running[0].info.run_id, "loss"):
                break
            time.sleep(0.1)
        server.kill()
        output = training.communicate(timeout=300)[0]
    finally:
        if training.poll() is None:
            training.kill()
            training.wait()
        if server.process is None:
            server.start()
    [run] = running
    assert training.returncode != 0
    assert (f"lost during training: the server is gone ([Errno 111] Connection refused); run {run.info.run_name} "
            f"({run.info.run_id}) is incomplete") in output

    resumed = run_sh(a, "dvc", "repro").stdout
    assert "resuming after epoch" in resumed
    assert f"resuming MLflow run {run.info.run_name} ({run.info.run_id})" in resumed
    record = client.get_run(run.info.run_id)
    assert record.info.status == "FINISHED" and "test_accuracy" in record.data.metrics
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert epoch_steps(client, run.info.run_id, key) == [1, 2, 3, 4], key
    assert [r.info.run_id for r in team_runs(clones.server) if r.info.run_name == run.info.run_name] == [
        run.info.run_id]

    # The database restarts between two runs: the server reconnects by itself and the next run is recorded.
    postgresql_server.restart()
    set_params(a, {"train.epochs": 1})
    run_sh(a, "dvc", "repro")
    latest = client.search_runs([experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert latest.info.status == "FINISHED" and latest.data.params["train.epochs"] == "1"
    assert latest.data.params["model.architecture"] == "lenet"
