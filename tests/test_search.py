"""Search: search.yaml validation (fast), and two workers sharing a study in a real PostgreSQL (slow)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers.params import TINY
from helpers.project import ROOT, project_env, project_paths

from stages import search
from stages.core.search import report as search_report
from stages.core.search import trials as search_trials


@pytest.fixture
def spec_in(tmp_path, monkeypatch):
    """Writes the shipped search.yaml with edits into a project folder (a copy of params.yaml) and runs the CLI."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)

    def run(edit, capsys) -> tuple[int, str]:
        spec = yaml.safe_load((ROOT / "search.yaml").read_text())
        edit(spec)
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
        with pytest.raises(SystemExit) as exit_info:
            search.main(["bad.yaml"])
        return exit_info.value.code, capsys.readouterr().err

    return run


def test_shipped_search_yaml_is_valid():
    from stages.core.schema import read_yaml

    spec = search.load_search(ROOT / "search.yaml", read_yaml(ROOT / "params.yaml"))
    assert spec.space and spec.n_trials >= 1


def _set(key, value):
    return lambda spec: spec.__setitem__(key, value)


def _space(key, value):
    return lambda spec: spec["space"].__setitem__(key, value)


@pytest.mark.parametrize(("edit", "line"), [
    (_set("n_trial", 5),
     "n_trial: unknown key; did you mean 'n_trials'?"),
    (_space("train.optimizer.nme", {"choices": ["adam"]}),
     "space.train.optimizer.nme: not a params.yaml key; did you mean 'train.optimizer.name'?"),
    (_space("train.optimizer.name", {"choice": ["adam"]}),
     "space.train.optimizer.name.choice: unknown key; did you mean 'choices'?"),
    (_space("train.optimizer.name", {"choices": ["adam", "rmsprob"]}),
     "space: train.optimizer.name: 'rmsprob' is not allowed; did you mean 'rmsprop'?"),
    (_set("space", {}), "space: empty: name at least one params.yaml key"),
    (_space("train.optimizer.learning_rate", {"low": 1, "high": 1.0e-3, "log": True}),
     "space.train.optimizer.learning_rate: bad range: low (1) must be below high (0.001)"),
    (_space("train.optimizer.learning_rate", {"low": 0.0, "high": 1.0, "log": True}),
     "space.train.optimizer.learning_rate: bad range: log: true needs low > 0 (got 0.0)"),
    (_set("storage", "postgres://search:secret@db/optuna"),
     "storage: unknown scheme 'postgres'; did you mean 'postgresql'?"),
    (_set("sampler", "grid"), "sampler grid needs choices: [...] for every key, not a range: "
                              "train.optimizer.learning_rate"),
])
def test_bad_search_yaml_fails_with_one_clear_line(spec_in, capsys, tmp_path, edit, line):
    code, err = spec_in(edit, capsys)
    assert code == 1
    assert err.startswith("error: bad.yaml is invalid:\n")
    problems = err.splitlines()[1:]
    assert len(problems) == 1 and line in problems[0], err
    assert "secret" not in err
    assert not (tmp_path / "optuna.db").exists(), "nothing created for a bad spec"


@pytest.mark.parametrize("push", ["upstream", "--help"])
def test_push_must_name_a_git_remote_of_the_clone(spec_in, capsys, tmp_path, push):
    """Checked before the first trial (before the study is opened): one line naming the remotes there are."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "remote", "add", "origin", str(tmp_path / "origin.git")], cwd=tmp_path, check=True)
    code, err = spec_in(_set("push", push), capsys)
    assert code == 1
    assert err.splitlines() == [f"error: bad.yaml: push {push!r} is not a git remote of this clone (its remotes: "
                                "origin): name one of them, or set push: false"], err
    assert not (tmp_path / "optuna.db").exists(), "no study opened, no trial run"


def test_a_trial_is_pushed_to_the_remote_named_and_pushed_says_whether_it_was(tmp_path, monkeypatch):
    """The remote goes after `--`: git allows a remote named "--help", which `dvc exp push --help` would take for
    its option (help printed, exit 0, nothing pushed). The oracle is the remote's own refs."""
    monkeypatch.setenv("PATH", project_env([])["PATH"])  # the venv's dvc
    clone, remote = tmp_path / "clone", tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    subprocess.run(["git", "init", "-q", str(clone)], check=True)
    (clone / "dvc.yaml").write_text("stages:\n  count:\n    cmd: echo 1 > out.txt\n    outs: [out.txt]\n")
    for command in (["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "a stage"],
                    ["dvc", "exp", "run", "-q", "--name", "study-0"], ["git", "remote", "add", "--", "--help",
                                                                          str(remote)]):
        subprocess.run(command, cwd=clone, env=project_env([clone]), check=True, capture_output=True)
    search_trials.check_push("--help", clone, "search.yaml")  # a remote of the clone: allowed

    assert search_trials.push_experiment("study-0", clone, "--help") is True
    refs = git(remote, "for-each-ref", "--format=%(refname)", "refs/exps").split()
    assert [ref.rsplit("/", 1)[1] for ref in refs] == ["study-0"]
    shutil.rmtree(remote)  # the remote gone: not pushed, and said so
    assert search_trials.push_experiment("study-0", clone, "--help") is False
    assert search_trials.push_experiment("study-0", clone, False) is False


def test_values_become_dvc_set_arguments():
    assert search_trials.set_arguments({"train.optimizer.name": "sgd", "train.optimizer.learning_rate": 0.0125,
                                 "train.epochs": 3, "preprocess.limit": None, "train.resume": False}) == [
        "-S", "train.optimizer.name=sgd", "-S", "train.optimizer.learning_rate=0.0125", "-S", "train.epochs=3",
        "-S", "preprocess.limit=null", "-S", "train.resume=false"]
    assert search.storage_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert search.storage_url("sqlite:///optuna.db") == "sqlite:///optuna.db"


STUDY = "ci-search"
SEARCH = {
    "study": STUDY, "n_trials": 6, "push": "origin", "heartbeat_interval": 1, "grace_period": 3, "max_retry": 2,
    "space": {"train.optimizer.name": {"choices": ["adam", "sgd"]},
              "train.optimizer.learning_rate": {"low": 1.0e-3, "high": 0.1, "log": True}},
}


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.1)
    return result


def processes_in(folder: Path) -> list[int]:
    """Processes working in `folder` (the killed worker's trial: dvc and its stages)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")).is_relative_to(folder):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def temp_copies(clone: Path) -> list[Path]:
    """The temporary copies `dvc exp run --temp` makes for the trials of this clone."""
    return sorted((clone / ".dvc" / "tmp" / "exps" / "standalone").glob("tmp*"))


def stage_running(clone: Path) -> bool:
    """A pipeline stage of a trial runs in one of the clone's temporary copies (its params are set there by then)."""
    for copy in temp_copies(clone):
        for pid in processes_in(copy):
            try:
                if b"stages." in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return True
            except OSError:
                continue
    return False


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=project_env([cwd]), check=True, capture_output=True,
                          text=True).stdout


@pytest.mark.timeout(1800)  # 3 whole `dvc exp run`s, two at a time on 2 cores
def test_two_workers_share_a_study_and_a_killed_workers_trial_is_retried(project_copy, postgresql_server, mlflow_server,
                                                                       tmp_path, mnist_10k):
    import optuna

    storage = postgresql_server.create_database("optuna_ci_search")
    experiment = "ci-search"
    base = project_copy(tmp_path / "base", {**TINY, "data.source": str(mnist_10k), "tracking.uri": mlflow_server.uri,
                                            "tracking.experiment": experiment,
                                            "tracking.model_prefix": "ci-search-"})
    spec = yaml.safe_load((base / "search.yaml").read_text())
    # The fewest trials that prove a kill and a retry: a's trial is killed; b runs its own and then the retry.
    spec.update(SEARCH, storage=storage, n_trials=2)
    (base / "search.yaml").write_text(yaml.safe_dump(spec))
    git(base, "commit", "-qam", "tiny search")
    git(tmp_path, "clone", "-q", "--bare", str(base), "origin.git")
    workers, logs = {}, {}
    for name in ("a", "b"):  # two clones of one origin: two machines
        clone = tmp_path / name
        git(tmp_path, "clone", "-q", str(tmp_path / "origin.git"), name)
        logs[name] = tmp_path / f"worker-{name}.log"
        with open(logs[name], "w") as log:
            workers[name] = subprocess.Popen(
                [sys.executable, "-m", "stages.search", "search.yaml"], cwd=clone, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                env=project_env([clone], STAGES_JOBS="2", MLFLOW_DISABLE_TELEMETRY="true"))
    try:
        # Kill worker a (its whole process group) once its trial's training has started: its MLflow run is open.
        params_before = (tmp_path / "a" / "params.yaml").read_bytes()
        client = mlflow_server.client()

        def training_in_a() -> bool:
            started = re.findall(r"^trial (\d+) ", logs["a"].read_text(), re.M)
            experiment_of = client.get_experiment_by_name(experiment)
            found = bool(started and experiment_of and client.search_runs(
                [experiment_of.experiment_id], filter_string=f"tags.`search.trial` = '{started[-1]}' and "
                                                               "attributes.status = 'RUNNING'"))
            time.sleep(0 if found else 0.5)  # gentle on the server the trials use
            return found

        wait_for(training_in_a, 600, "worker a's first training")
        os.killpg(workers["a"].pid, signal.SIGKILL)
        workers["a"].wait()
        killed = int(re.findall(r"^trial (\d+) ", logs["a"].read_text(), re.M)[-1])
        # Its training goes with it: nothing keeps running in its clone, and its workspace is as it was.
        wait_for(lambda: not processes_in(tmp_path / "a"), 300, "worker a's trial to stop")
        assert git(tmp_path / "a", "status", "--porcelain") == ""
        assert (tmp_path / "a" / "params.yaml").read_bytes() == params_before
        # Its DVC gets SIGINT from the worker's death and removes its copy, unless the clean-up itself is cut short;
        # what is left then goes when the clone's next worker starts.
        search.remove_orphaned_trials(tmp_path / "a", settle=0)
        assert not temp_copies(tmp_path / "a")
        assert workers["b"].wait(timeout=1200) == 0, logs["b"].read_text()[-5000:]
    finally:
        for process in workers.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    study = optuna.load_study(study_name=STUDY, storage=search.storage_url(storage))
    trials = {trial.number: trial for trial in study.trials}
    complete = [trial for trial in trials.values() if trial.state.name == "COMPLETE"]
    assert len(complete) == 2, "exactly n_trials"
    assert trials[killed].state.name == "FAIL", "the stale trial of the killed worker is failed"
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed]
    assert [t.state.name for t in retries] == ["COMPLETE"], "and run again once, by the other worker"
    assert retries[0].params == trials[killed].params

    # Every COMPLETE trial is one DVC experiment, pushed to origin, and nothing else is.
    names = [t.user_attrs["dvc_exp"] for t in complete]
    assert len(set(names)) == len(names) == len(complete)
    refs = git(tmp_path / "origin.git", "for-each-ref", "--format=%(refname)", "refs/exps").split()
    assert sorted(ref.rsplit("/", 1)[1] for ref in refs) == sorted(names)
    # ... and one MLflow run tagged with the study and its number; the killed trial's run ended KILLED.
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                              filter_string=f"tags.`search.study` = '{STUDY}'")
    by_trial: dict[int, list] = {}
    for run in runs:
        if "search.trial" in run.data.tags:  # not the study's parent run
            by_trial.setdefault(int(run.data.tags["search.trial"]), []).append(run)
    for trial in complete:
        if not trial.user_attrs["restored"]:
            assert [r.info.run_id for r in by_trial[trial.number]] == [trial.user_attrs["mlflow_run_id"]]
            assert by_trial[trial.number][0].info.status == "FINISHED"
            assert "test_accuracy" in by_trial[trial.number][0].data.metrics
    # Stopped, not finished nor left running: the lost worker takes the trial's output pipe with it, so the stage
    # ends either on the signal (KILLED) or on the broken pipe first (FAILED).
    every_run = [(r.info.run_name, r.info.status, r.data.tags.get("search.trial"))
                 for r in client.search_runs([client.get_experiment_by_name(experiment).experiment_id])]
    assert [r.info.status for r in by_trial.get(killed, [])] in (["KILLED"], ["FAILED"]), every_run

    # The report: best first, Optuna's plots, the best params as a command; also on the study's MLflow run.
    report = project_paths(tmp_path / "b").search
    table = (report / "trials.csv").read_text().splitlines()
    best = max(complete, key=lambda t: t.value)
    assert table[1].startswith(f"{best.number},")
    assert f"-S train.optimizer.name={best.params['train.optimizer.name']}" in (report / "best.txt").read_text()
    for plot in search_report.PLOTS:
        assert (report / plot).stat().st_size > 0
    parents = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                                 filter_string=f"tags.`search.role` = 'study' and tags.`search.study` = '{STUDY}'")
    assert len(parents) == 1
    logged = {item.path for item in client.list_artifacts(parents[0].info.run_id, "search")}
    assert {"search/trials.csv", "search/best.txt"} <= logged
    assert client.get_run(best.user_attrs["mlflow_run_id"]).data.tags["mlflow.parentRunId"] == parents[0].info.run_id


def test_the_worker_imports_neither_tensorflow_nor_mlflow_to_start():
    """A worker only orchestrates: TensorFlow loads in the trials' stages, MLflow only for the final report."""
    code = ("import sys, stages.search; "
            "sys.exit(sorted(m for m in ('tensorflow', 'keras', 'mlflow') if m in sys.modules) or None)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_report_lists_complete_trials_best_first_with_plots_and_a_ready_command(tmp_path):
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState

    from stages.core.schema import read_yaml

    spec = search.load_search(ROOT / "search.yaml", read_yaml(ROOT / "params.yaml"))
    study = optuna.create_study(direction="maximize")
    distributions = {"train.optimizer.name": CategoricalDistribution(["adam", "sgd"]),
                     "train.optimizer.learning_rate": FloatDistribution(1e-4, 1.0, log=True)}
    for number, (name, rate, value, state) in enumerate([("sgd", 0.05, 0.91, TrialState.COMPLETE),
                                                         ("adam", 0.002, 0.97, TrialState.COMPLETE),
                                                         ("adam", 0.5, None, TrialState.FAIL),
                                                         ("sgd", 0.001, 0.62, TrialState.COMPLETE)]):
        study.add_trial(optuna.create_trial(
            state=state, value=value, distributions=distributions,
            params={"train.optimizer.name": name, "train.optimizer.learning_rate": rate},
            user_attrs={"dvc_exp": f"{spec.study}-{number}", "test_accuracy": value, "restored": False},
            system_attrs={"failed_trial": 2} if number == 3 else {}))  # 3 ran 2's params again

    written = search.write_report(study, spec, tmp_path / "search")

    table = pd.read_csv(tmp_path / "search" / "trials.csv")
    assert table["number"].tolist() == [1, 0, 3, 2]  # COMPLETE best first, then the failed one
    assert table["state"].tolist()[-1] == "FAIL"
    assert table.set_index("number")["retry_of"].fillna(-1).astype(int).to_dict() == {1: -1, 0: -1, 3: 2, 2: -1}
    best = (tmp_path / "search" / "best.txt").read_text().splitlines()
    assert best[-1] == "dvc exp run -S train.optimizer.name=adam -S train.optimizer.learning_rate=0.002"
    assert f"dvc exp apply {spec.study}-1" in best[1]
    assert {path.name for path in written} == {"trials.csv", "best.txt", *search_report.PLOTS}
    assert all(path.stat().st_size > 0 for path in written)


def test_the_slice_plot_shows_every_trial_and_labels_that_do_not_overlap():
    """Optuna's slice plot as the report draws it: no trial in a colour close to the white paper, and a log axis
    spanning three decades with tick labels that do not overprint each other."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import optuna
    from optuna.visualization.matplotlib import plot_slice

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda trial: trial.suggest_float("train.optimizer.learning_rate", 1e-4, 0.5, log=True) + len(
        trial.suggest_categorical("train.optimizer.name", ["adam", "sgd"])), n_trials=12)
    figure = plot_slice(study).flat[0].figure
    search_report.legible_slices(figure)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    panels = [axes for axes in figure.axes if axes.get_label() != "<colorbar>"]
    for axes in panels:
        for points in axes.collections:
            colours = points.get_facecolors()
            assert len(colours) and np.all(colours[:, :3].mean(axis=1) < 0.85), "a trial drawn (nearly) white"
        low, high = sorted(axes.get_xlim())
        labels = [label for label in axes.get_xticklabels(which="both")
                  if label.get_visible() and label.get_text() and low <= label.get_position()[0] <= high]
        boxes = sorted((label.get_window_extent(renderer) for label in labels), key=lambda box: box.x0)
        assert len(boxes) >= 2
        assert all(left.x1 <= right.x0 for left, right in zip(boxes, boxes[1:], strict=False)), [
            label.get_text() for label in labels]
    plt.close(figure)


def spec_for(storage: str, **changes) -> search.SearchSpec:
    from stages.core.schema import read_yaml

    raw = {**yaml.safe_load((ROOT / "search.yaml").read_text()), **SEARCH, "storage": storage, **changes}
    (path := Path(os.environ.get("TMPDIR", "/tmp")) / f"spec-{os.getpid()}.yaml").write_text(yaml.safe_dump(raw))
    return search.load_search(path, read_yaml(ROOT / "params.yaml"))


def test_a_worker_with_another_spec_is_refused_naming_the_keys(postgresql_server):
    storage = postgresql_server.create_database("optuna_ci_spec")
    search.open_study(spec_for(storage))
    search.open_study(spec_for(storage.replace("127.0.0.1", "localhost")))  # the same spec, reached another way
    other_space = {**SEARCH["space"], "train.batch_size": {"choices": [32, 64]}}
    with pytest.raises(search.SearchError) as refused:
        search.open_study(spec_for(storage, n_trials=7, space=other_space))
    assert len(str(refused.value).splitlines()) == 1
    assert "differs in: n_trials, space.train.batch_size.choices):" in str(refused.value)


def test_a_bad_port_in_storage_is_one_line_without_the_password():
    with pytest.raises(search.SearchError) as bad:
        search.open_study(spec_for("postgresql://me:secret@db.example:notaport/optuna"))
    assert len(str(bad.value).splitlines()) == 1
    assert "notaport" in str(bad.value) and "me:***@" in str(bad.value) and "secret" not in str(bad.value)


SIMULATED_WORKER = """
import random, sys, time
from stages import search
spec = search.load_search(sys.argv[1], search.read_yaml("params.yaml"))
study = search.open_study(spec)

def objective(trial):
    trial.suggest_categorical("train.optimizer.name", ["adam", "sgd"])
    print(f"trial {trial.number}", flush=True)
    time.sleep(random.uniform(0.3, 1.5))
    if random.random() < 0.2:
        raise search.TrialFailed("a genuine failure")
    return random.random()

search.work(study, spec, objective, search.StopAfterFailures())
"""


@pytest.mark.timeout(1200)  # bounds a hang: each round waits on its workers' logs and exits
def test_three_workers_end_with_exactly_n_trials_complete_even_when_one_is_killed(postgresql_server, tmp_path):
    import optuna

    storage = postgresql_server.create_database("optuna_ci_exact")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    for round_ in range(2):
        spec = yaml.safe_load((ROOT / "search.yaml").read_text())
        spec.update(SEARCH, storage=storage, study=f"exact-{round_}", space={"train.optimizer.name": {
            "choices": ["adam", "sgd"]}})
        (tmp_path / "search.yaml").write_text(yaml.safe_dump(spec))
        logs = [tmp_path / f"worker-{round_}-{i}.log" for i in range(3)]
        workers = [subprocess.Popen([sys.executable, "-c", SIMULATED_WORKER, "search.yaml"], cwd=tmp_path,
                                    stdout=log.open("w"), stderr=subprocess.STDOUT, env=project_env([ROOT]))
                   for log in logs]
        # The first worker seen in a trial is lost mid-trial (a lost machine: its trial goes stale and another
        # worker runs it again). Not worker 0 by rote: a worker that starts late may find the study done before it
        # asks for a trial. Events, not time: the bounds only catch a hang.
        def in_a_trial(logs=logs, workers=workers):
            return next((worker for worker, log in zip(workers, logs, strict=True) if "trial" in log.read_text()), None)

        lost = wait_for(in_a_trial, 500, "a worker's first trial")
        lost.kill()
        lost.wait()
        for worker, log in zip(workers, logs, strict=True):
            if worker is not lost:
                assert worker.wait(timeout=500) == 0, log.read_text()[-3000:]
        trials = optuna.load_study(study_name=f"exact-{round_}", storage=search.storage_url(storage)).trials
        states = [t.state.name for t in trials]
        assert states.count("COMPLETE") == SEARCH["n_trials"], states
        assert "RUNNING" not in states and "WAITING" not in states, states
        print(f"round {round_}: {len(trials)} trials, {states.count('COMPLETE')} COMPLETE, "
              f"{states.count('FAIL')} FAIL, {states.count('PRUNED')} not needed")
    # One report: written from the storage, the same bytes whoever writes it (each worker's clone, or --report).
    spec = search.load_search(tmp_path / "search.yaml", search.read_yaml(ROOT / "params.yaml"))
    for clone in ("a", "b"):
        search.write_report(search.open_study(spec), spec, tmp_path / clone)
    for name in ("trials.csv", "best.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert "RUNNING" not in (tmp_path / "a" / "trials.csv").read_text()


def test_a_password_in_a_tracked_search_yaml_gets_a_warning(tmp_path, capsys):
    (tmp_path / "search.yaml").write_text("storage: postgresql://me:secret@db/optuna\n")
    search.warn_of_a_password(tmp_path / "search.yaml", "postgresql://me:secret@db/optuna")
    assert capsys.readouterr().err == "", "not tracked by git: no warning"
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "search.yaml")
    search.warn_of_a_password(tmp_path / "search.yaml", "postgresql://me@db/optuna")
    assert capsys.readouterr().err == "", "no password: no warning"
    search.warn_of_a_password(tmp_path / "search.yaml", "postgresql://me:secret@db/optuna")
    warning = capsys.readouterr().err
    assert "tracked by git" in warning and "PGPASSWORD" in warning and "secret" not in warning


@pytest.fixture(scope="module")
def search_clone(project_copy, tmp_path_factory, mnist_10k):
    """A project copy for one worker at a time on SQLite (the kill tests); each test names its own study."""
    folder = tmp_path_factory.mktemp("search-clone")
    clone = project_copy(folder / "clone", {**TINY, "data.source": str(mnist_10k), "tracking.enabled": False})
    return clone


def start_worker(clone: Path, study: str) -> tuple[subprocess.Popen, Path]:
    """A worker of a one-trial study whose spec lives outside the clone (the clone's files stay committed)."""
    spec = yaml.safe_load((clone / "search.yaml").read_text())
    spec.update(SEARCH, study=study, storage="sqlite:///optuna.db", push=False, n_trials=1)
    path = clone.parent / f"{study}.yaml"
    path.write_text(yaml.safe_dump(spec))
    log = clone.parent / f"{study}.log"
    worker = subprocess.Popen([sys.executable, "-m", "stages.search", str(path)], cwd=clone, stdout=log.open("w"),
                              stderr=subprocess.STDOUT, start_new_session=True,
                              env=project_env([clone], PYTHONUNBUFFERED="1"))
    return worker, log


@pytest.mark.timeout(900)  # bounds a hang, not the speed of a busy machine
@pytest.mark.parametrize("how, code, last_line", [
    ("SIGKILL", -signal.SIGKILL, None),
    ("SIGTERM", 143, "terminated (SIGTERM); nothing half-written was left"),
    ("Ctrl-C", 130, "interrupted (SIGINT); nothing half-written was left"),
])
def test_a_stopped_worker_leaves_the_workspace_as_it_was(search_clone, how, code, last_line):
    """Once a trial's stage runs (its params set in DVC's temporary copy), the worker is stopped: afterwards
    `git status` is empty, params.yaml is byte-identical, and no temporary copy or process is left."""
    clone = search_clone
    before = (clone / "params.yaml").read_bytes()
    worker, log = start_worker(clone, f"stop-{how.lower()}")
    try:
        wait_for(lambda: stage_running(clone) or worker.poll() is not None, 300, "the trial's first stage")
        assert worker.poll() is None, log.read_text()[-3000:]
        if how == "SIGKILL":  # the worker's process group: the trial runs in its own, told by setpriv
            os.killpg(worker.pid, signal.SIGKILL)
        elif how == "SIGTERM":
            worker.terminate()
        else:  # the terminal's Ctrl-C: SIGINT to the foreground process group
            os.killpg(worker.pid, signal.SIGINT)
        assert worker.wait(timeout=300) == code, log.read_text()[-3000:]
        wait_for(lambda: not processes_in(clone), 300, "the trial to stop")
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    output = log.read_text()
    assert "Traceback" not in output, output[-3000:]
    if last_line:
        assert output.splitlines()[-1] == last_line, output[-3000:]
    assert git(clone, "status", "--porcelain") == "", output[-3000:]
    assert (clone / "params.yaml").read_bytes() == before
    assert not temp_copies(clone), "DVC removes its temporary copy on SIGINT"


@pytest.mark.timeout(900)
def test_a_lost_machines_temporary_copy_is_removed_by_the_next_worker(search_clone):
    """Every process of the trial SIGKILLed at once (nothing can clean up): the copy stays, `dvc exp show` would
    list it as running forever; the next worker in the clone removes it before its first trial."""
    clone = search_clone
    worker, log = start_worker(clone, "lost")
    try:
        wait_for(lambda: stage_running(clone) or worker.poll() is not None, 300, "the trial's first stage")
        assert worker.poll() is None, log.read_text()[-3000:]
        for pid in [worker.pid, *processes_in(clone)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        worker.wait(timeout=300)
        wait_for(lambda: not processes_in(clone), 300, "the trial's processes to die")
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    [left] = temp_copies(clone)
    assert search.remove_orphaned_trials(clone) == ["lost-0"]
    assert not left.exists() and not temp_copies(clone)
    shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=clone, env=project_env([clone]), check=True,
                           capture_output=True, text=True).stdout
    assert '"running"' not in shown and "lost-0" not in shown
    assert git(clone, "status", "--porcelain") == ""


def test_a_copy_left_without_its_run_record_is_removed_once_settled(tmp_path):
    """A DVC stopped halfway through its own clean-up leaves a copy without its record: removed once it has not
    changed for `settle` seconds; a copy being made right now (its record not yet written) is kept."""
    standalone = tmp_path / ".dvc" / "tmp" / "exps" / "standalone"
    old, fresh = standalone / "tmpold", standalone / "tmpfresh"
    for copy in (old, fresh):
        (copy / "data").mkdir(parents=True)
    os.utime(old, (time.time() - 300, time.time() - 300))
    assert search.remove_orphaned_trials(tmp_path, settle=120) == ["tmpold"]
    assert not old.exists() and fresh.exists()
