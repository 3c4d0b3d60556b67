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

import stages.core.venv  # noqa: F401  (first: without the project's packages, one line, not a traceback)

import argparse
import logging
import re
import time
import warnings
from pathlib import Path

from stages.core.schema import (
    PARAMS_FILE,
    Params,
    minimised,
    read_yaml,
)
from stages.core.search.report import complete_trials, write_report
from stages.core.search.spec import (
    STORAGE_HINT,
    SearchError,
    SearchSpec,
    check_spec,
    load_search,
    storage_url,
    warn_of_a_password,
)
from stages.core.search.trials import (
    FAILURES_IN_A_ROW,
    StopAfterFailures,
    TrialFailed,
    check_push,
    make_objective,
    remove_orphaned_trials,
)
from stages.core.tracking import study as tracking_study

CREATED_MEANWHILE = {"42710", "42P07"}  # PostgreSQL's duplicate_object, duplicate_table


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
        except (SQLAlchemyError, ValueError) as error:  # ValueError: e.g. a port that is not a number
            # Workers started together race to create Optuna's tables and types; the loser finds them made
            # (PostgreSQL: a unique violation, or "type studydirection already exists").
            if attempt < 2 and (isinstance(error, IntegrityError) or getattr(
                    getattr(error, "orig", None), "sqlstate", None) in CREATED_MEANWHILE):
                time.sleep(1 + attempt)
                continue
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


def run(params: Params, spec_path: str | Path = "search.yaml", report_only: bool = False) -> None:
    import optuna

    project = Path.cwd()
    raw_params = read_yaml(project / PARAMS_FILE)
    spec = load_search(spec_path, raw_params)
    warn_of_a_password(spec_path, spec.storage)
    if not report_only:
        check_push(spec.push, project, spec_path)
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
