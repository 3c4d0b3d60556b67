"""A trial of the search: one `dvc exp run --temp` with its values, run as its own process group that dies with
the worker, its result read from the experiment's commit, and the clean-up of copies a dead worker left."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from stages.core.entry import dies_with_parent
from stages.core.errors import PipelineError
from stages.core.records import finished_experiment
from stages.core.schema import (
    PARAMS_FILE,
    Params,
    load_params,
    minimised,
)
from stages.core.search.spec import Scalar, SearchError, SearchSpec, suggest
from stages.core.tracking.training import SEARCH_TAGS

FAILURES_IN_A_ROW = 3  # a worker whose trials keep failing stops: something is wrong beyond one trial
KILL_AFTER_SECONDS = 30  # a trial told to stop gets this long to close its MLflow run before SIGKILL


RESTORED_MARK = "Stage 'train' is cached - skipping run"  # DVC's run-cache restored the training


def yaml_value(value: Scalar) -> str:
    """A value as `dvc exp run -S` parses it (YAML): null, true/false, repr of a float."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def set_arguments(values: dict[str, Any]) -> list[str]:
    return [argument for key, value in values.items() for argument in ("-S", f"{key}={yaml_value(value)}")]


def trial_command(name: str, values: dict[str, Any], timeout_seconds: int) -> list[str]:
    return dies_with_parent(["timeout", "--signal=INT", f"--kill-after={KILL_AFTER_SECONDS}", str(timeout_seconds),
                             "dvc", "exp", "run", "--temp", "--name", name, *set_arguments(values)], "INT")


def run_trial(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the trial, echoing its output; on Ctrl-C or SIGTERM (Terminated, see stages.entry) stop all of it
    before passing the interrupt on."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               bufsize=1)
    # `timeout` catches SIGINT itself (even where the worker's is ignored, as in a background job) and DVC gets
    # the default one after exec: a SIGINT sent here always reaches DVC.
    lines = []
    try:
        for line in process.stdout:
            sys.stdout.write(line)
            lines.append(line)
        return process.wait(), "".join(lines)
    except BaseException:
        process.send_signal(signal.SIGINT)  # `timeout` passes it to every process of the trial
        process.wait()
        raise


def remove_orphaned_trials(project: Path, settle: float = 120) -> list[str]:
    """Remove the temporary copies of `dvc exp run --temp` runs whose DVC died without cleaning up (the machine
    lost, SIGKILL of every process) or was stopped halfway through its clean-up (a copy without its run record):
    neither `dvc exp clean` nor `dvc exp remove` does, and `dvc exp show` would list them as running forever. A copy
    some live process works in is left alone, and so is one without a record changed in the last `settle` seconds
    (DVC writes the record only once the copy is made). Returns their names."""
    import psutil

    exps = (project / ".dvc" / "tmp" / "exps").resolve()
    live = {Path(process.info["cwd"]) for process in psutil.process_iter(["cwd"]) if process.info["cwd"]}

    def in_use(root: Path) -> bool:
        return any(cwd.is_relative_to(root) for cwd in live)

    removed, recorded = [], set()
    for info in exps.glob("standalone/run/*/*.run"):  # DVC 3's executor records (requirements.lock pins DVC)
        try:
            record = json.loads(info.read_text())
        except (OSError, ValueError):
            continue
        root = Path(record.get("root_dir") or "").resolve()
        recorded.add(root)
        if record.get("result_ref") is not None or not root.is_relative_to(exps) or in_use(root):
            continue
        for folder in (root, info.parent, exps / "run" / info.parent.name):
            shutil.rmtree(folder, ignore_errors=True)
        removed.append(record.get("name") or root.name)
    for root in exps.glob("standalone/tmp*"):
        with contextlib.suppress(OSError):
            if root not in recorded and not in_use(root) and time.time() - root.stat().st_mtime >= settle:
                shutil.rmtree(root)
                removed.append(root.name)
    return removed


def check_push(remote: str | bool, project: Path, spec_path: str | Path) -> None:
    """search.yaml's push names a git remote of this clone: one line before the first trial, not a warning after
    each."""
    if remote is False:
        return
    remotes = subprocess.run(["git", "remote"], cwd=project, capture_output=True, text=True).stdout.split()
    if remote not in remotes:
        raise SearchError(f"{spec_path}: push {remote!r} is not a git remote of this clone (its remotes: "
                          f"{', '.join(remotes) or 'none'}): name one of them, or set push: false")


def push_experiment(name: str, cwd: Path, remote: str | bool) -> bool:
    """`dvc exp push` to the remote search.yaml names, with the outputs when a DVC remote is set; False when it
    was not asked for or failed."""
    if remote is False:
        return False
    has_dvc_remote = bool(subprocess.run(["dvc", "remote", "default"], cwd=cwd, capture_output=True,
                                         text=True).stdout.strip())
    # After `--`: git allows a remote named "--help", which would otherwise print DVC's help and exit 0.
    command = ["dvc", "exp", "push", *([] if has_dvc_remote else ["--no-cache"]), "--", remote, name]
    pushed = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if pushed.returncode != 0:
        print(f"warning: `{shlex.join(command)}` failed: {pushed.stderr.strip()[-500:]}", file=sys.stderr)
    return pushed.returncode == 0


def experiment_rev(project: Path, name: str) -> str:
    """The commit of this clone's experiment `name` (DVC keeps it under refs/exps/<base commit>/<name>)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=project, check=True, capture_output=True, text=True).stdout.strip()

    base = git("rev-parse", "HEAD")
    return git("rev-parse", f"refs/exps/{base[:2]}/{base[2:]}/{name}")


def trial_result(project: Path, name: str, params: Params, metric: str) -> tuple[float, dict[str, Any]]:
    """The objective (best epoch's metric from the history) and what else the trial produced, read from its
    experiment's commit: a --temp run leaves nothing in the workspace."""
    import dvc.api

    rev = experiment_rev(project, name)
    history, test, run = finished_experiment(params.paths, lambda path: dvc.api.read(path, repo=str(project),
                                                                                     rev=rev))
    value = float(history[metric].min() if minimised(metric) else history[metric].max())
    return value, {"test_accuracy": test.get("test_accuracy"), "mlflow_run_id": run.run_id}


def make_objective(spec: SearchSpec, raw_params: dict, project: Path):
    def objective(trial) -> float:
        values = suggest(trial, spec.space, raw_params)
        name = f"{spec.study}-{trial.number}"
        trial.set_user_attr("dvc_exp", name)
        variables = dict(zip(SEARCH_TAGS, (spec.study, str(trial.number)), strict=True))
        print(f"trial {trial.number} ({name}): {shlex.join(set_arguments(values))}", flush=True)
        code, output = run_trial(trial_command(name, values, spec.trial_timeout), {**os.environ, **variables})
        if code != 0:
            raise TrialFailed(f"trial {trial.number}: `dvc exp run` exited with {code}")
        value, produced = trial_result(project, name, load_params(project / PARAMS_FILE), spec.metric)
        for key, attribute in {**produced, "restored": RESTORED_MARK in output}.items():
            trial.set_user_attr(key, attribute)
        trial.set_user_attr("pushed", push_experiment(name, project, spec.push))
        return value

    return objective


class TrialFailed(PipelineError):
    """This trial failed (its output says why); the worker goes on with the next."""


class StopAfterFailures:
    """Stops this worker after FAILURES_IN_A_ROW of its own trials failed one after the other."""

    def __init__(self):
        self.in_a_row = 0

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState

        self.in_a_row = self.in_a_row + 1 if trial.state == TrialState.FAIL else 0
        if self.in_a_row >= FAILURES_IN_A_ROW:
            study.stop()
