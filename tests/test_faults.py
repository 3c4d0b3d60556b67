"""Faults and bad input on a real copy of the project: real processes, real signals, real DVC and MLflow.

One project copy for the module (a few hundred real digits, a small model with augmentation and dropout, MLflow in
the copy's own mlflow.db) is reproduced once; its trained model is the reference an interrupted training must
equal. Each test breaks one thing at a moment it waits for: tests/fault_hook pauses a stage where it opens a temp
file (an epoch's history row, an .npz being written, a file in the download folder), and the signal comes then,
never after a guessed sleep. Each test checks the exit code and the one-line message, that no temp file is left
anywhere in the project, the MLflow run's status, and that the next `dvc repro` succeeds without manual steps.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from helpers.disk import fill, small_disk
from helpers.net import answering
from helpers.params import TINY
from helpers.project import project_env, set_params, sh

HOOK = Path(__file__).with_name("fault_hook")
EPOCHS = 4
# Augmentation (params.yaml's train.augment, on by default) and dropout draw random numbers a resume must replay;
# the 512-unit layer makes the best epoch's weights (~2.8 MB) larger than anything training writes before them, for
# the file-size limit.
LAYERS = [
    {"type": "Conv2D", "filters": 8, "kernel_size": 3, "activation": "relu"},
    {"type": "MaxPooling2D", "pool_size": 2},
    {"type": "Flatten"},
    {"type": "Dense", "units": 512, "activation": "relu"},
    {"type": "Dropout", "rate": 0.3},
    {"type": "Dense", "units": 10},
]
SETTINGS = {
    **TINY,
    "model.layers": LAYERS,
    "train.epochs": EPOCHS,
    "train.batch_size": 16,
    "train.precision": "float32",
}
MESSAGE = re.compile(r"^(error|terminated|interrupted)\b")
WAIT_S = 300


class Started:
    """A process started in the project, its output in a file, optionally paused by the fault hook."""

    def __init__(self, project: Path, *command: str, pause: str | None = None, **env: str):
        self.marker = project.parent / "paused-at"
        self.marker.unlink(missing_ok=True)
        self.log_path = project.parent / "output.log"
        if pause:
            env.update(STAGES_TEST_PAUSE=pause, STAGES_TEST_PAUSE_MARKER=str(self.marker))
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(command, cwd=project, env=project_env([project, HOOK], **env),
                                            stdout=log, stderr=subprocess.STDOUT)

    def paused(self) -> tuple[int, str]:
        """Wait for the hook's pause; (pid of the paused stage, the temp path it was opening)."""
        deadline = time.monotonic() + WAIT_S
        while not self.marker.exists():
            if self.process.poll() is not None:
                raise AssertionError(f"ended ({self.process.returncode}) before the fault point:\n{self.output()}")
            assert time.monotonic() < deadline, f"no pause within {WAIT_S} s:\n{self.output()}"
            time.sleep(0.05)
        pid, path = self.marker.read_text().splitlines()
        return int(pid), path

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=WAIT_S)
        finally:
            if self.process.poll() is None:  # a failed check must not leave a process behind for the next tests
                self.process.kill()
                self.process.wait()

    def output(self) -> str:
        return self.log_path.read_text()


def the_message(output: str, pattern: str) -> str:
    """The one line a stage ends with (`error: ...`, `terminated ...`, `interrupted ...`), checked against pattern."""
    assert "Traceback" not in output, output[-4000:]
    lines = [line for line in output.splitlines() if MESSAGE.match(line)]
    assert len(lines) == 1, output[-4000:]
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def temp_files(project: Path) -> list[Path]:
    """What the atomic writer leaves when it is not allowed to clean up: `.<name>.tmp-*` files or folders."""
    return [path for path in project.rglob(".*.tmp-*") if ".git" not in path.relative_to(project).parts]


def run_statuses(project: Path) -> dict[str, str]:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mnist")
    return {run.info.run_id: run.info.status for run in client.search_runs([experiment.experiment_id])}


def new_runs(project: Path, before: dict[str, str]) -> list[str]:
    """Statuses of the runs started since `before`; runs that existed then must be unchanged."""
    after = run_statuses(project)
    assert {run: after[run] for run in before} == before
    return [status for run, status in after.items() if run not in before]


def assert_recovers(project: Path) -> None:
    """Nothing half-written is left, and the next `dvc repro` succeeds without a manual step."""
    assert not temp_files(project)
    sh(project, "git", "checkout", "--", "params.yaml")
    sh(project, "dvc", "repro")


def paths_of(project: Path):
    from stages.core.schema import load_params

    return load_params(project / "params.yaml").paths


@pytest.fixture(scope="module")
def project(project_copy, tmp_path_factory, mnist_10k) -> Path:
    """The project after one `dvc repro`; its history and model are kept aside as the uninterrupted reference."""
    base = tmp_path_factory.mktemp("faults")
    path = base / "project"
    path.mkdir()
    project_copy(path, {**SETTINGS, "data.source": str(mnist_10k)})
    sh(path, "dvc", "repro")
    paths = paths_of(path)
    reference = base / "reference"
    reference.mkdir()
    shutil.copy(path / paths.history, reference / "history.csv")
    shutil.copy(path / paths.model, reference / "model.keras")
    return path


@pytest.fixture(autouse=True)
def no_stage_left_running(project):
    """After each fault no stage of the project may still run (an orphan would write outputs dvc.lock never records);
    one that does is killed so the next test starts clean, and the test fails."""
    yield
    left = []
    for process in psutil.process_iter(["cwd", "cmdline"]):
        cwd, cmdline = process.info["cwd"], " ".join(process.info["cmdline"] or ())
        if cwd and Path(cwd).is_relative_to(project) and "stages." in cmdline:
            left.append(cmdline)
            with contextlib.suppress(psutil.Error):
                process.kill()
    assert not left, f"still running after the test: {left}"


def assert_same_training(project: Path) -> None:
    """The project's trained history and weights equal the reference's, bit for bit."""
    import keras

    paths, reference = paths_of(project), project.parent / "reference"
    pd.testing.assert_frame_equal(pd.read_csv(project / paths.history).drop(columns="seconds"),
                                  pd.read_csv(reference / "history.csv").drop(columns="seconds"), check_exact=True)
    trained = keras.saving.load_model(project / paths.model, compile=False).get_weights()
    expected = keras.saving.load_model(reference / "model.keras", compile=False).get_weights()
    for got, want in zip(trained, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_training_killed_while_writing_its_resume_state_resumes_to_the_same_model(project):
    before = run_statuses(project)
    # Killed while the first epoch's state is written: nothing to resume, the next training starts over.
    first = Started(project, "python", "-m", "stages.train", pause="stages.train:.state.tmp-:1")
    first.paused()
    first.process.send_signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    # That one is killed while the third epoch's state is written: epochs 1-2 are saved, epoch 3 is not.
    second = Started(project, "python", "-m", "stages.train", pause="stages.train:.state.tmp-:3")
    second.paused()
    second.process.send_signal(signal.SIGKILL)
    assert second.wait() == -signal.SIGKILL
    assert "resuming" not in second.output()

    resumed = Started(project, "python", "-m", "stages.train")
    assert resumed.wait() == 0, resumed.output()[-4000:]
    assert "resuming after epoch 2" in resumed.output()
    assert_same_training(project)
    # MLflow leaves the killed runs RUNNING; the next training marks them KILLED.
    assert sorted(new_runs(project, before)) == ["FINISHED", "KILLED", "KILLED"]
    assert_recovers(project)


def test_a_full_disk_while_saving_the_resume_state_is_one_line_and_the_rerun_continues(project):
    before = run_statuses(project)
    resume = project / paths_of(project).resume
    with small_disk(resume, 64):
        # Room for a state (weights, optimizer: ~8 MB) and the best weights (~3 MB), not for three states at once.
        filler = fill(resume, 20)
        full = Started(project, "python", "-m", "stages.train")
        assert full.wait() == 1, full.output()[-4000:]
        # Which file meets the full disk first depends on whether an epoch improved (a new best is written then).
        the_message(full.output(), r"^error: cannot write \S*\.resume/\w+/(state|best\.weights)\.npz: No space left on "
                                   r"device; free space .*then rerun `dvc repro`$")
        assert "Segmentation" not in full.output()
        assert new_runs(project, before) == ["FAILED"]
        assert not temp_files(project)

        filler.unlink()  # space again
        again = Started(project, "python", "-m", "stages.train")
        assert again.wait() == 0, again.output()[-4000:]
        assert re.search(r"^resuming after epoch [1-3] ", again.output(), re.MULTILINE), again.output()[-4000:]
    assert_same_training(project)
    assert_recovers(project)


def test_an_mlflow_store_on_a_full_disk_is_one_line(project, tmp_path):
    with small_disk(tmp_path / "disk", 8 + (project / "mlflow.db").stat().st_size // 2**20) as disk:
        shutil.copy(project / "mlflow.db", disk / "mlflow.db")
        fill(disk, 0)
        evaluate = Started(project, "python", "-m", "stages.evaluate",
                           MLFLOW_TRACKING_URI=f"sqlite:///{disk / 'mlflow.db'}")
        assert evaluate.wait() == 1, evaluate.output()[-4000:]
    the_message(evaluate.output(), rf"^error: cannot write {disk / 'mlflow.db'}: (database or disk is full|disk I/O "
                                   r"error); free space .*then rerun `dvc repro`$")
    assert not temp_files(project)
    assert_recovers(project)


def test_a_file_size_limit_while_saving_the_best_epoch_leaves_no_broken_checkpoint(project):
    before = run_statuses(project)
    # The best epoch's weights (~2.8 MB) are the first file training writes past 2 MB; mlflow.db stays below.
    limited = Started(project, "bash", "-c", "ulimit -f 2048 && exec python -m stages.train")
    assert limited.wait() == 1, limited.output()[-4000:]
    the_message(limited.output(), r"^error: cannot write \S*best\.weights\.npz: File too large")
    assert new_runs(project, before) == ["FAILED"]
    assert not list((project / paths_of(project).resume).glob("*/*best*"))

    again = Started(project, "python", "-m", "stages.train")
    assert again.wait() == 0, again.output()[-4000:]
    assert_same_training(project)
    assert_recovers(project)


@pytest.mark.parametrize(("stage", "pause", "signum", "code", "message"), [
    ("download", "stages.download:.mnist.tmp-:2", signal.SIGTERM, 143, r"^terminated \(SIGTERM\)"),
    ("preprocess", "stages.preprocess:.train.tmp-:1", signal.SIGTERM, 143, r"^terminated \(SIGTERM\)"),
    ("preprocess", "stages.preprocess:.train.tmp-:1", signal.SIGINT, 130, r"^interrupted \(SIGINT\)"),
    ("train", "stages.train:.history.tmp-:1", signal.SIGTERM, 143, r"^terminated \(SIGTERM\)"),
    ("evaluate", "stages.evaluate:.tmp-:1", signal.SIGTERM, 143, r"^terminated \(SIGTERM\)"),
    ("plots", "stages.plots:.tmp-:1", signal.SIGTERM, 143, r"^terminated \(SIGTERM\)"),
], ids=["download-TERM", "preprocess-TERM", "preprocess-INT", "train-TERM", "evaluate-TERM", "plots-TERM"])
def test_a_signal_during_a_stage_leaves_nothing_behind(project, stage, pause, signum, code, message):
    before = run_statuses(project)
    dvc = Started(project, "dvc", "repro", "--force", "--single-item", stage, pause=pause)
    pid, path = dvc.paused()
    assert ".tmp-" in path
    os.kill(pid, signum)
    assert dvc.wait() != 0
    output = dvc.output()
    assert f"exited with {code}" in output, output[-4000:]
    the_message(output, message)
    assert not temp_files(project)
    assert new_runs(project, before) == (["KILLED"] if stage == "train" else [])
    assert_recovers(project)


def test_sigterm_to_dvc_stops_the_training_it_started(project):
    before = run_statuses(project)
    dvc = Started(project, "dvc", "repro", "--force", "--single-item", "train", pause="stages.train:.history.tmp-:1")
    pid, _ = dvc.paused()
    training = psutil.Process(pid)
    dvc.process.send_signal(signal.SIGTERM)
    assert dvc.wait() in (-signal.SIGTERM, 143)
    training.wait(timeout=60)  # the stage notices that dvc is gone and leaves, cleaning up
    the_message(dvc.output(), r"^terminated: the process that started this stage \(dvc, pid \d+\) is gone")
    assert not (project / paths_of(project).model).exists(), "nothing written behind dvc.lock's back"
    assert new_runs(project, before) == ["KILLED"]
    assert_recovers(project)


def test_a_tracking_server_answering_500_fails_in_seconds(project):
    server = answering(lambda handler: handler.send_error(500, "Internal Server Error"))
    before = run_statuses(project)
    try:
        started = time.monotonic()
        dvc = Started(project, "dvc", "repro", "--force", "--single-item", "train", MLFLOW_TRACKING_URI=server.url)
        assert dvc.wait() != 0
        elapsed = time.monotonic() - started
    finally:
        server.close()
    the_message(dvc.output(), rf"^error: MLflow tracking server {server.url} answers HTTP 500")
    assert elapsed < 60, f"{elapsed:.0f} s"
    assert new_runs(project, before) == []
    assert_recovers(project)


def trickle(handler) -> None:
    """Announce a 10 kB file, then send one byte a second until the client hangs up."""
    handler.send_response(200)
    handler.send_header("Content-Length", "10000")
    handler.end_headers()
    try:
        while True:
            handler.wfile.write(b"\0")
            handler.wfile.flush()
            time.sleep(1)
    except OSError:
        pass


def test_a_mirror_trickling_1_byte_a_second_hits_the_overall_deadline(project):
    before = run_statuses(project)
    server = answering(trickle)
    try:
        set_params(project, {"data.source": server.url + "/", "data.timeout": 2})
        started = time.monotonic()
        dvc = Started(project, "dvc", "repro")
        assert dvc.wait() != 0
        elapsed = time.monotonic() - started
    finally:
        server.close()
    the_message(dvc.output(), r"^error: could not get train-images-idx3-ubyte.gz of mnist from data.source")
    assert re.search(r"too slow: \d+ of 10000 bytes in \d+ s", dvc.output())
    assert elapsed < 120, f"{elapsed:.0f} s"
    assert new_runs(project, before) == []
    assert_recovers(project)


def test_paths_outside_the_project_are_refused_before_any_work(project):
    before = run_statuses(project)
    outside = project.parent / "outside_models"
    set_params(project, {"paths.model": "../outside_models/model.keras"})
    dvc = Started(project, "dvc", "repro")
    assert dvc.wait() != 0
    the_message(dvc.output(), r"^error: paths\.model: \.\./outside_models/model\.keras is outside the project")
    assert not outside.exists()
    assert new_runs(project, before) == []
    assert_recovers(project)


@pytest.mark.parametrize(("split", "stage", "damage", "reason"), [
    ("train", "train", lambda path: path.write_bytes(path.read_bytes()[:2000]), "File is not a zip file"),
    ("test", "evaluate", lambda path: np.savez(path, x=np.array([object()] * 3), labels=np.zeros(3)),
     "Object arrays cannot be loaded"),
], ids=["truncated", "object-dtype"])
def test_a_damaged_processed_file_is_one_line_naming_it(project, split, stage, damage, reason):
    before = run_statuses(project)
    path = Path(paths_of(project).processed) / f"{split}.npz"
    damage(project / path)
    dvc = Started(project, "dvc", "repro", "--single-item", stage)
    assert dvc.wait() != 0
    the_message(dvc.output(), rf"^error: {re.escape(str(path))} is damaged .*\({reason}.*rerun `dvc repro preprocess`$")
    assert new_runs(project, before) == []
    assert_recovers(project)


def test_a_layer_stack_that_shrinks_to_nothing_keeps_keras_reason_and_opens_no_run(project):
    before = run_statuses(project)
    layers = [{"type": "Conv2D", "filters": 4, "kernel_size": 3}, *[{"type": "MaxPooling2D", "pool_size": 2}] * 5,
              {"type": "Flatten"}, {"type": "Dense", "units": 10}]
    set_params(project, {"model.layers": layers})
    dvc = Started(project, "dvc", "repro")
    assert dvc.wait() != 0
    the_message(dvc.output(), r"^error: model\.layers\[5\] \(MaxPooling2D\): Computed output size would be zero or "
                              r"negative")
    assert new_runs(project, before) == []
    assert_recovers(project)


@pytest.mark.parametrize("emptied", [False, True], ids=["missing", "empty"])
def test_a_missing_or_empty_params_yaml_is_named(project, emptied):
    before = run_statuses(project)
    params = project / "params.yaml"
    if emptied:
        params.write_text("")
    else:
        params.unlink()
    dvc = sh(project, "dvc", "repro", check=False)
    assert dvc.returncode != 0
    if emptied:
        # DVC fills in dvc.yaml before any stage runs and names only the first key it misses: the comment above
        # the stages, where that error points, says what it means; the params stage says it outright.
        missing_key = re.search(r"Could not find '([\w.]+)'", dvc.stderr).group(0)
        assert missing_key in (project / "dvc.yaml").read_text()
        stage = sh(project, "python", "-m", "stages.params", check=False)
        assert stage.returncode == 1
        the_message(stage.stderr, r"^error: params\.yaml is empty: restore it with `git checkout params\.yaml`")
    else:
        assert "'params.yaml' does not exist" in dvc.stderr
    assert new_runs(project, before) == []
    assert_recovers(project)
