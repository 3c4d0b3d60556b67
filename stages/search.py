"""Hyperparameter search: an Optuna worker that joins a study and runs its trials as DVC experiments.

Reads  search.yaml (study, storage, trial count, search space over params.yaml keys), params.yaml
Writes {paths.search}/: trials.csv (best first), Optuna's plots as PNGs, best.txt (the best params as a
       ready `dvc exp run -S ...` line); the same files on the study's parent run in MLflow
Run    python -m stages.search search.yaml   (again here in another clone, or on other machines: all join)
       python -m stages.search search.yaml --report   (the complete study's report, from its storage, anywhere)

Each trial is `dvc exp run --temp --name <study>-<trial> -S key=value ...`: DVC runs it in a copy of this worker's
clone under .dvc/tmp/exps, so the workspace (params.yaml, dvc.lock, outputs) is never touched; its MLflow run is
tagged with the study and trial number, and with `push: <remote>` the worker pushes it (`dvc exp push`). The study
ends with exactly n_trials COMPLETE trials over all workers: Optuna numbers trials under a lock on the study row,
so a trial runs only if fewer than n_trials trials before it are COMPLETE, RUNNING or WAITING (a retry); the others
are PRUNED with user attr not_needed and left out of the report. The study records a fingerprint of its spec
(search.yaml minus storage); a worker with another spec is refused. A worker that dies stops heartbeating;
after the grace period the next worker to start a trial fails the stale one and runs it again
(Optuna's RetryHeartbeatStaleTrialCallback).

A trial runs as `setpriv --pdeathsig INT timeout --signal=INT ... dvc exp run --temp ...`: `timeout` makes the trial
its own process group and passes an INT on to all of it; setpriv sends it that INT when the worker dies, even by
SIGKILL, so no training outlives its worker. INT, not TERM: on SIGINT DVC removes its temporary copy, on SIGTERM it
leaves it behind. A copy left anyway (the whole machine lost) is removed by the next worker that starts here.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stages.core.entry import dies_with_parent
from stages.core.errors import PipelineError
from stages.core.files import write_csv, write_text
from stages.core.records import finished_experiment
from stages.core.schema import (
    PARAMS_FILE,
    Params,
    ParamsError,
    describe_error,
    did_you_mean,
    flatten,
    load_params,
    minimised,
    parse_params,
    read_yaml,
    set_dotted,
)
from stages.core.tracking import study as tracking_study
from stages.core.tracking.training import SEARCH_TAGS

STORAGE_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg")
STORAGE_HINT = ("use sqlite:///optuna.db (this machine alone) or postgresql://user@host/database (a team; the "
                "password in PGPASSWORD or ~/.pgpass)")
KILL_AFTER_SECONDS = 30  # a trial told to stop gets this long to close its MLflow run before SIGKILL
FAILURES_IN_A_ROW = 3  # a worker whose trials keep failing stops: something is wrong beyond one trial
RESTORED_MARK = "Stage 'train' is cached - skipping run"  # DVC's run-cache restored the training
PLOTS = {
    "optimization_history.png": "plot_optimization_history",
    "param_importances.png": "plot_param_importances",
    "slice.png": "plot_slice",
}
Scalar = str | int | float | bool | None


class SearchError(PipelineError):
    """search.yaml is invalid or the study cannot go on."""


class Dimension(BaseModel):
    """One searched params key: a list of choices, or a range low..high (log-uniform with log: true)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    choices: list[Scalar] | None = None
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Dimension:
        ranged = [name for name in ("low", "high", "step") if getattr(self, name) is not None] + ["log"] * self.log
        if self.choices is not None:
            if ranged:
                raise ValueError(f"give either choices or a range, not both (also set: {', '.join(ranged)})")
            if not self.choices:
                raise ValueError("choices is empty: list at least one value")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs choices: [...] or a range with low and high")
        if self.low >= self.high:
            raise ValueError(f"bad range: low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"bad range: log: true needs low > 0 (got {self.low})")
        if self.step is not None and (self.log or self.step <= 0):
            raise ValueError("step must be positive and cannot go with log: true")
        return self


class SearchSpec(BaseModel):
    """search.yaml. Every key is required: the shipped search.yaml is the one place its values live."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    study: str
    storage: str
    n_trials: Annotated[int, Field(ge=1)]
    sampler: Literal["tpe", "grid"]
    metric: Literal["val_accuracy", "val_loss"]
    heartbeat_interval: Annotated[int, Field(ge=1)]
    grace_period: Annotated[int, Field(ge=1)]
    max_retry: Annotated[int, Field(ge=0)]
    trial_timeout: Annotated[int, Field(ge=0)]
    push: Literal[False] | str  # false, or the git remote each trial's experiment is pushed to
    space: dict[str, Dimension]

    @field_validator("study")
    @classmethod
    def _names_an_experiment(cls, study: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", study):
            raise ValueError(f"{study!r} cannot name DVC experiments: use letters, digits, '.', '_' and '-'")
        return study

    @field_validator("storage")
    @classmethod
    def _known_scheme(cls, storage: str) -> str:
        scheme = storage.split("://", 1)[0] if "://" in storage else ""
        if scheme not in STORAGE_SCHEMES:
            # Only the scheme is echoed: the rest may hold a password.
            raise ValueError(f"unknown scheme {scheme!r}{did_you_mean(scheme, STORAGE_SCHEMES)}; {STORAGE_HINT}")
        return storage

    @field_validator("space")
    @classmethod
    def _not_empty(cls, space: dict) -> dict:
        if not space:
            raise ValueError("empty: name at least one params.yaml key, e.g. "
                             "train.optimizer.learning_rate: {low: 1.0e-4, high: 1.0e-1, log: true}")
        return space

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpec:
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(f"grace_period ({self.grace_period}) must be longer than heartbeat_interval "
                             f"({self.heartbeat_interval}), or live trials count as stale")
        if self.sampler == "grid":
            ranged = [key for key, dimension in self.space.items() if dimension.choices is None]
            if ranged:
                raise ValueError(f"sampler grid needs choices: [...] for every key, not a range: {', '.join(ranged)}")
        return self


def check_space(space: dict[str, Dimension], raw_params: dict) -> list[str]:
    """Each searched key must be a params.yaml key, and each choice or bound a value params.yaml accepts there."""
    known = list(flatten(raw_params))
    problems = []
    for key, dimension in space.items():
        if key not in known:
            problems.append(f"space.{key}: not a params.yaml key{did_you_mean(key, known)}")
            continue
        for value in dimension.choices if dimension.choices is not None else (dimension.low, dimension.high):
            candidate = copy.deepcopy(raw_params)
            set_dotted(candidate, key, value)
            try:
                parse_params(candidate)
            except ParamsError as error:
                problems.extend(f"space: {line.strip()}" for line in str(error).splitlines()[1:])
    return problems


def load_search(path: str | Path, raw_params: dict) -> SearchSpec:
    """Read and validate search.yaml; one SearchError with a line per problem."""
    if not Path(path).is_file():
        raise SearchError(f"{path} not found: give the search spec, e.g. `python -m stages.search search.yaml`")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise SearchError(f"{path}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    try:
        spec = SearchSpec.model_validate(raw)
        problems = check_space(spec.space, raw_params)
    except ValidationError as error:
        problems = [describe_error(e, SearchSpec) for e in error.errors(include_url=False)]
    if problems:
        raise SearchError(f"{path} is invalid:\n  " + "\n  ".join(problems))
    return spec


def warn_of_a_password(spec_path: str | Path, storage: str) -> None:
    """A password in a search.yaml that git tracks ends up in every clone: libpq reads it from elsewhere."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        password = make_url(storage).password
    except (ArgumentError, ValueError):
        return
    path = Path(spec_path)
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", path.name], cwd=path.parent.resolve(),
                             capture_output=True).returncode == 0
    if password and tracked:
        print(f"warning: {path} is tracked by git and its storage holds a password: drop it from the URL and set "
              "PGPASSWORD or a ~/.pgpass line (host:port:database:user:password) instead", file=sys.stderr)


def storage_url(storage: str) -> str:
    # SQLAlchemy reads a bare postgresql:// as psycopg2; the project installs psycopg 3.
    return re.sub(r"^postgresql://", "postgresql+psycopg://", storage)


def int_valued(raw_params: dict, key: str) -> bool:
    node: Any = raw_params
    for part in key.split("."):
        node = node[part]
    return isinstance(node, int) and not isinstance(node, bool)


def suggest(trial, space: dict[str, Dimension], raw_params: dict) -> dict[str, Any]:
    """The trial's value for every searched key; integer keys get integers."""
    values = {}
    for key, dimension in space.items():
        if dimension.choices is not None:
            values[key] = trial.suggest_categorical(key, dimension.choices)
        elif int_valued(raw_params, key):
            values[key] = trial.suggest_int(key, int(dimension.low), int(dimension.high),
                                            step=int(dimension.step or 1), log=dimension.log)
        else:
            values[key] = trial.suggest_float(key, dimension.low, dimension.high, step=dimension.step,
                                              log=dimension.log)
    return values


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


def push_experiment(name: str, cwd: Path, remote: str | bool) -> bool:
    """`dvc exp push` to the remote search.yaml names, with the outputs when a DVC remote is set; False when it
    was not asked for or failed."""
    if remote is False:
        return False
    has_dvc_remote = bool(subprocess.run(["dvc", "remote", "default"], cwd=cwd, capture_output=True,
                                         text=True).stdout.strip())
    command = ["dvc", "exp", "push", remote, name, *([] if has_dvc_remote else ["--no-cache"])]
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


def open_study(spec: SearchSpec):
    """Join the study (creating it if this is the first worker), with heartbeats and the stale-trial retry."""
    import optuna
    from sqlalchemy.exc import IntegrityError, SQLAlchemyError

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat and retry
    url = storage_url(spec.storage)
    for attempt in range(3):
        try:
            storage = optuna.storages.RDBStorage(
                url, heartbeat_interval=spec.heartbeat_interval, grace_period=spec.grace_period,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(spec.max_retry),
            )
            break
        except IntegrityError:
            # Workers started together race to create Optuna's tables; the loser finds them made.
            if attempt == 2:
                raise
            time.sleep(1 + attempt)
        except (SQLAlchemyError, ValueError) as error:  # ValueError: e.g. a port that is not a number
            shown = re.sub(r"(//[^:@/]*):[^@/]*@", r"\1:***@", url)  # it may not parse: hide the password by hand
            raise SearchError(f"storage {shown} failed: {str(error).splitlines()[0]}; {STORAGE_HINT}") from None
    if spec.sampler == "grid":
        sampler = optuna.samplers.GridSampler({key: d.choices for key, d in spec.space.items()})
    else:
        sampler = optuna.samplers.TPESampler()  # unseeded: workers seeded alike would propose the same trials
    direction = "minimize" if minimised(spec.metric) else "maximize"
    study = optuna.create_study(study_name=spec.study, storage=storage, sampler=sampler, direction=direction,
                                load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise SearchError(f"study {spec.study!r} exists and is to {study.direction.name.lower()}; metric "
                          f"{spec.metric} needs {direction}: name a new study")
    check_spec(study, spec)
    return study


def spec_record(spec: SearchSpec) -> dict:
    """What makes a study one study: the whole spec but where it is stored (teammates reach it by other URLs)."""
    return json.loads(spec.model_dump_json(exclude={"storage"}, exclude_defaults=True))


def spec_fingerprint(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def differing_keys(recorded: dict, mine: dict) -> list[str]:
    flat_recorded, flat_mine = dict(flatten(recorded)), dict(flatten(mine))
    return sorted(key for key in flat_recorded.keys() | flat_mine.keys()
                  if flat_recorded.get(key, "<absent>") != flat_mine.get(key, "<absent>"))


def check_spec(study, spec: SearchSpec) -> None:
    """The first worker records the spec in the study's user attrs; a worker with another spec is refused."""
    mine = spec_record(spec)
    recorded = study.user_attrs.get("spec")
    if recorded is None:
        # Two first workers may both get here: the same spec writes the same value, another one is caught below
        # by whichever reads after the other wrote.
        study.set_user_attr("spec", mine)
        study.set_user_attr("spec_fingerprint", spec_fingerprint(mine))
        recorded = study.user_attrs["spec"]
    if spec_fingerprint(recorded) != spec_fingerprint(mine):
        raise SearchError(f"study {spec.study!r} was started with another search spec (differs in: "
                          f"{', '.join(differing_keys(recorded, mine))}): use the same search.yaml or name a new study")


def complete_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def exactly(study, n_trials: int, objective):
    """The objective, run only if fewer than n_trials trials numbered before this one are COMPLETE or may still
    be (RUNNING, WAITING): trial numbers are a total order (Optuna assigns them under a lock on the study row)."""
    import optuna
    from optuna.trial import TrialState

    def guarded(trial) -> float:
        states = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
        before = [t for t in study.get_trials(deepcopy=False, states=states) if t.number < trial.number]
        if len(before) >= n_trials:
            trial.set_user_attr("not_needed", True)
            raise optuna.TrialPruned()
        return objective(trial)

    return guarded


def quiet_interrupts(record) -> bool:
    """Optuna logs a trial stopped by Ctrl-C or SIGTERM as failed, with a traceback; the worker's one line says it."""
    from stages.core.errors import Terminated

    error = record.exc_info[1] if record.exc_info else None
    # "Trial N failed with value None." follows every failure and adds nothing to the line before it.
    return not isinstance(error, KeyboardInterrupt | Terminated) and not record.getMessage().endswith("value None.")


def work(study, spec: SearchSpec, objective, failures) -> None:
    """Start trials until the study has n_trials COMPLETE ones; wait while running trials may get it there."""
    import random

    import optuna
    from optuna.trial import TrialState

    guarded = exactly(study, spec.n_trials, objective)
    while failures.in_a_row < FAILURES_IN_A_ROW:
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial becomes a WAITING retry
        states = [t.state for t in study.get_trials(deepcopy=False)]
        complete, running = states.count(TrialState.COMPLETE), states.count(TrialState.RUNNING)
        if complete >= spec.n_trials:
            return
        # Never wait while a retry is WAITING: ask() hands it out first, and waiting for it would deadlock.
        if TrialState.WAITING not in states and complete + running >= spec.n_trials:
            time.sleep(0.5 + random.random())  # a running trial completes, fails or goes stale
            continue
        study.optimize(guarded, n_trials=1, catch=(TrialFailed,), gc_after_trial=False, callbacks=[failures])


def trials_table(study):
    """Every trial, COMPLETE ones first and best first, with what each produced."""
    frame = study.trials_dataframe(attrs=("number", "value", "state", "duration", "params", "user_attrs",
                                          "system_attrs"))
    frame = frame.rename(columns=lambda column: column.removeprefix("user_attrs_").removeprefix("params_"))
    frame = frame.rename(columns={"system_attrs_failed_trial": "retry_of"})
    if "not_needed" in frame:  # trials started after n_trials were under way: never run, not part of the study
        frame = frame[frame["not_needed"] != True].drop(columns="not_needed")  # noqa: E712 (NaN for the others)
    if "retry_of" in frame:
        frame["retry_of"] = frame["retry_of"].astype("Int64")  # a trial number, blank when not a retry
    frame = frame.drop(columns=[c for c in frame.columns if c.startswith("system_attrs_")])
    frame["complete"] = frame["state"] == "COMPLETE"
    ascending = study.direction.name == "MINIMIZE"
    frame = frame.sort_values(["complete", "value"], ascending=[False, ascending]).drop(columns="complete")
    frame["duration"] = frame["duration"].dt.total_seconds().round(1)
    return frame.rename(columns={"duration": "seconds"}).reset_index(drop=True)


def legible_slices(figure) -> None:
    """Optuna's slice plot as it can be read: trial 0 is drawn white on white in its colour map, a log axis labels
    its minor ticks on top of each other, and the panels' axis titles run into one line at the default size."""
    import matplotlib
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.ticker import FuncFormatter

    visible = ListedColormap(matplotlib.colormaps["Blues"](np.linspace(0.35, 1.0, 256)))
    panels = [axes for axes in figure.axes if axes.get_label() != "<colorbar>"]
    for axes in panels:
        for points in axes.collections:
            points.set_cmap(visible)  # the colour bar follows its scatter
            points.set_edgecolor("dimgrey")
        if axes.get_xscale() == "log":  # written out (0.002, not 2×10⁻³); 2 and 5 too over at most two decades
            low, high = sorted(axes.get_xlim())
            minor = (2, 5) if np.log10(high / low) <= 2 else ()
            axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
            axes.xaxis.set_minor_formatter(FuncFormatter(
                lambda x, _, minor=minor: f"{x:g}" if round(x / 10 ** np.floor(np.log10(x))) in minor else ""))
        axes.tick_params(axis="x", which="both", labelrotation=30)
    figure.set_size_inches(1.5 + 4 * len(panels), 4.5)


def write_report(study, spec: SearchSpec, folder: Path) -> list[Path]:
    """trials.csv, Optuna's plots and best.txt in `folder`; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as optuna_plots

    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "trials.csv"]
    table = trials_table(study)
    write_csv(written[0], table)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for file_name, function in PLOTS.items():
        try:
            with warnings.catch_warnings():  # one trial: "identical low and high xlims", widened by matplotlib
                warnings.simplefilter("ignore", UserWarning)
                axes = getattr(optuna_plots, function)(study)
        except (ValueError, RuntimeError) as error:  # e.g. importances need two COMPLETE trials
            print(f"search report: {file_name} skipped ({error})")
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        if function == "plot_slice":
            legible_slices(figure)
        figure.savefig(folder / file_name, dpi=100, bbox_inches="tight")
        plt.close(figure)
        written.append(folder / file_name)
    best = study.best_trial
    lines = [
        f"# best of {len(complete_trials(study))} COMPLETE trials in study {spec.study}: trial {best.number}, "
        f"{spec.metric} {best.value:.4f}, test_accuracy {best.user_attrs.get('test_accuracy')}",
        f"# its DVC experiment: dvc exp apply {best.user_attrs.get('dvc_exp')}",
        shlex.join(["dvc", "exp", "run", *set_arguments(best.params)]),
    ]
    write_text(folder / "best.txt", "\n".join(lines) + "\n")
    written.append(folder / "best.txt")
    with_columns = [c for c in ("number", "state", "value", *spec.space, "test_accuracy", "restored") if c in table]
    print(table[with_columns].head(10).to_string(index=False))
    print("\n".join(lines))
    return written


def run(params: Params, spec_path: str | Path = "search.yaml", report_only: bool = False) -> None:
    import optuna

    project = Path.cwd()
    raw_params = read_yaml(project / PARAMS_FILE)
    spec = load_search(spec_path, raw_params)
    warn_of_a_password(spec_path, spec.storage)
    study = open_study(spec)
    failures = StopAfterFailures()
    if not report_only and len(complete_trials(study)) < spec.n_trials:
        for name in remove_orphaned_trials(project):
            print(f"removed the temporary copy of trial {name}, left by a worker that died here")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        for handler in logging.getLogger("optuna").handlers:  # a handler's filter sees the child loggers' records
            handler.addFilter(quiet_interrupts)
        work(study, spec, make_objective(spec, raw_params, project), failures)
    if failures.in_a_row >= FAILURES_IN_A_ROW:
        raise SearchError(f"{FAILURES_IN_A_ROW} trials in a row failed in this worker (their output is above); "
                          "stopped")
    if (done := len(complete_trials(study))) < spec.n_trials:
        # The report is the finished study's, the same from every worker: no best of a study still under way.
        raise SearchError(f"study {spec.study!r} has {done} of {spec.n_trials} COMPLETE trials: no report until it "
                          "is complete (start a worker, or `--report` once it is)")
    files = write_report(study, spec, Path(params.paths.search))
    tracking_study.log_study(params, spec.study, files)


def main(argv: list[str] | None = None) -> None:
    from stages.core.entry import tool_main

    parser = argparse.ArgumentParser(prog="python -m stages.search", description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", default="search.yaml", help="the search spec (default: search.yaml)")
    parser.add_argument("--report", action="store_true",
                        help="run no trial: write the complete study's report from its storage (the same everywhere)")
    arguments = parser.parse_args(argv)
    tool_main(lambda params: run(params, arguments.spec, arguments.report))


if __name__ == "__main__":
    main()
