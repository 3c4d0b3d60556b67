"""A newcomer's first `make run`, recorded: a fresh copy of the project, the default params, `make run` with the
environment this Python runs in (the set-up is not timed; its size is recorded), and what it printed.

Writes FILE (default reports/first-run.json): the seconds `make run` took, the machine (cores, load), the console
(stdout and stderr in the order printed), the test metrics and the training record. The docs' numbers blocks
`first-run.*` are rendered from its snapshot: `python -m benchmarks.docs --take first-run reports/first-run.json`.
Run: python -m benchmarks.first_run [--output FILE] [--keep]   (nice it on a shared machine: it trains the model)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stages.core.project_copy import ROOT, copy_project, project_env

EPOCH = re.compile(r"epoch +\d+/\d+ ")
KEPT_EPOCHS = 2  # the first and the last ones shown; the others become one "..." line


def duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{seconds:.0f} s" if seconds < 90 else f"{minutes} min"


def console_excerpt(console: str) -> list[str]:
    """The console from the train stage on, the middle epochs left out: what the README shows."""
    lines = console.splitlines()
    start = next((i for i, line in enumerate(lines) if line == "Running stage 'train':"), 0)
    lines = lines[start:]
    epochs = [i for i, line in enumerate(lines) if EPOCH.match(line)]
    if len(epochs) > 2 * KEPT_EPOCHS:
        left_out = epochs[KEPT_EPOCHS:-KEPT_EPOCHS]
        lines = lines[:left_out[0]] + [f"... ({len(left_out)} epochs)"] + lines[left_out[-1] + 1:]
    return lines


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def record(work: Path) -> dict:
    project = copy_project(work / "project", {})
    venv = Path(sys.prefix)
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    result = subprocess.run(["make", "-o", "setup", "run", f"VENV={venv}"], cwd=project, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=project_env([project]))
    seconds = time.monotonic() - started
    if result.returncode:
        raise SystemExit(f"make run failed ({result.returncode}):\n{result.stdout[-3000:]}")
    from stages.core.records import read_metrics, read_run
    from stages.core.schema import PARAMS_FILE, load_params

    with contextlib.chdir(project):  # params.yaml's paths are relative to the project root
        paths = load_params(PARAMS_FILE).paths
        metrics, run = read_metrics(paths), read_run(paths).fields
    return {"repro_seconds": round(seconds, 1), "console": result.stdout, "metrics": metrics,
            "run": {key: run.get(key) for key in ("architecture", "epochs_run", "train_seconds", "precision",
                                                   "dataset", "train_images", "test_images")},
            "machine": {"cores": len(os.sched_getaffinity(0)), "load": round(max(load_before, os.getloadavg()[0]), 1)},
            "venv_gigabytes": round(folder_bytes(venv) / 1e9, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.first_run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "reports" / "first-run.json")
    parser.add_argument("--keep", action="store_true", help="keep the project copy (printed)")
    arguments = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="first-run-"))
    try:
        recorded = record(work)
    finally:
        if arguments.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(recorded, indent=2) + "\n")
    print(f"wrote {arguments.output}: make run took {duration(recorded['repro_seconds'])}")


if __name__ == "__main__":
    main()
