"""The lines `make run` prints after `dvc repro`: what a run gave and what to do next, at most six, each one that
applies (tracking on or off, a local store or a server, dvc.lock committed or not, a failed run). The Makefile and
the MLflow page the URL opens are checked end to end in test_pipeline.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers.params import write_params
from helpers.project import ROOT, project_env

from stages.core import next_steps
from stages.core.records import write_metrics, write_run


@pytest.fixture
def project(make_params, tmp_path):
    """A git repository holding params.yaml, an uncommitted dvc.lock, run.json and metrics.json, as after a run."""
    def make(**overrides):
        params = make_params(**overrides)
        write_params(tmp_path, params)
        write_run(params.paths, {"architecture": "bn_cnn", "epochs_run": 20, "test_images": 2000, "run_id": "r1",
                                 "experiment_id": "7"})
        write_metrics(params.paths, {"test_accuracy": 0.99051, "test_loss": 0.03, "dataset": "mnist_10k"})
        (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
        subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
        return tmp_path

    return make


def test_after_a_run_tracked_in_the_local_store(project):
    root = project(tracking__enabled=True)
    shown = next_steps.lines(0, root)
    assert len(shown) <= 6, shown
    assert shown[0] == "Test accuracy 0.9905 on 2,000 held-out mnist_10k digits (bn_cnn, 20 epochs)"
    assert "`. .venv/bin/activate`" in shown[1]
    assert "`mlflow ui` first" in shown[2]
    assert shown[3].strip() == ("http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
                                "&compareRunsMode=CHART&viewStateShareKey=test-accuracy-first")
    assert "python -m stages.predict my_digit.png" in shown[4]
    assert 'git add dvc.lock && git commit -m "Baseline run"' in shown[5]


def test_a_server_and_a_committed_lock(project):
    root = project(tracking__enabled=True, tracking__uri="http://mlflow.team.internal:5000/")
    env = project_env([ROOT])
    for command in (["git", "add", "dvc.lock"], ["git", "commit", "-qm", "baseline"]):
        subprocess.run(command, cwd=root, check=True, env=env)
    shown = next_steps.lines(0, root)
    assert not any("mlflow ui" in line for line in shown)
    assert any(line.strip().startswith("http://mlflow.team.internal:5000/#/experiments/7/runs?") for line in shown)
    assert "dvc exp run" in shown[-1] and "dvc.lock" not in shown[-1]  # the baseline is committed already


def test_tracking_off_names_where_the_results_are(project):
    shown = next_steps.lines(0, project(tracking__enabled=False))
    assert not any("http" in line for line in shown) and any("tracking.enabled: false" in line for line in shown)


def test_after_a_failed_run_it_points_at_the_error_and_reads_nothing(tmp_path):
    shown = next_steps.lines(2, tmp_path)  # no params.yaml, no outputs: nothing is read
    assert len(shown) == 2 and "exit status 2" in shown[0] and "make run" in shown[1]


def test_as_a_program_it_takes_dvc_repro_s_status(tmp_path):
    result = subprocess.run([sys.executable, "-m", "stages.core.next_steps", "1"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env=project_env([ROOT]))
    assert result.returncode == 0 and result.stdout.startswith("`dvc repro` stopped (exit status 1)"), result


def test_make_in_a_copy_under_make_test_prints_no_directory_line(tmp_path, monkeypatch):
    """Under `make test` the suite inherits MAKELEVEL and MAKEFLAGS; a copy's `make run` must still be a top-level
    make, whose first line is its own (a sub-make prints "make[1]: Entering directory" first)."""
    monkeypatch.setenv("MAKELEVEL", "1")
    monkeypatch.setenv("MAKEFLAGS", "w")
    (tmp_path / "Makefile").write_text("hello:\n\t@echo hello\n")
    result = subprocess.run(["make", "hello"], cwd=tmp_path, env=project_env([tmp_path]), capture_output=True,
                            text=True, check=True)
    assert result.stdout == "hello\n"
