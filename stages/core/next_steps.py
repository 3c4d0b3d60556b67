"""What to do after `make run`: at most six lines, printed by the Makefile once `dvc repro` has ended (a DVC stage
would be skipped when its outputs are cached). Reads params.yaml, the training's run.json and the test metrics;
writes nothing, imports no MLflow, TensorFlow or DVC (a second, not seconds).

Run: python -m stages.core.next_steps [STATUS]   (STATUS: `dvc repro`'s exit status; 0 when left out)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stages.core.errors import PipelineError
from stages.core.files import project_root
from stages.core.records import read_metrics, read_run
from stages.core.schema import PARAMS_FILE, load_params
from stages.core.tracking.store import tracking_uri
from stages.core.tracking.views import page_url

LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default
ACTIVATE = ". .venv/bin/activate"


def failed(status: int) -> list[str]:
    return [f"`dvc repro` stopped (exit status {status}): the error above says what went wrong and what to do.",
            "Fix that and `make run` again: the stages that finished are not run twice."]


def mlflow_lines(uri: str, experiment_id: str | None) -> list[str]:
    """Where to see the run: the experiment's runs in MLflow's training view, compared by test accuracy first."""
    server = uri.startswith(("http://", "https://"))
    base = uri.rstrip("/") if server else LOCAL_UI
    page = page_url(base, experiment_id) if experiment_id else f"{base}/#/experiments"
    return ["MLflow, every run side by side, best test accuracy first" + (":" if server else " (`mlflow ui` first):"),
            f"  {page}"]


def baseline_line(root: Path) -> str:
    """Committing dvc.lock makes this run the baseline `dvc exp show` and `dvc metrics diff` compare with."""
    changed = subprocess.run(["git", "status", "--porcelain", "--", "dvc.lock"], cwd=root, capture_output=True,
                             text=True, check=False)
    if changed.returncode == 0 and not changed.stdout.strip():
        return "Try a change: dvc exp run -S train.epochs=5, then `dvc exp show` (README.md: the first hour)"
    return ('Keep this run as your baseline: git add dvc.lock && git commit -m "Baseline run" '
            "(then dvc exp show compares with it)")


def lines(status: int, root: Path) -> list[str]:
    """What applies after a `dvc repro` that ended with `status`, in the project at `root`."""
    if status:
        return failed(status)
    params = load_params(root / PARAMS_FILE)  # its paths are relative to the project root, the cwd
    metrics = read_metrics(params.paths)
    run = read_run(params.paths, missing_ok=True)
    fields = run.fields if run else {}
    epochs = fields.get("epochs_run")
    trained = ", ".join(part for part in (run and run.architecture, epochs and f"{epochs} epoch{'s' * (epochs != 1)}")
                        if part)
    held_out = f"{fields['test_images']:,} held-out " if "test_images" in fields else ""
    found = [f"Test accuracy {metrics['test_accuracy']:.4f} on {held_out}{metrics.get('dataset', '')} digits"
             + (f" ({trained})" if trained else ""),
             f"Next, in a shell where `{ACTIVATE}` has run (the project's environment):"]
    if params.tracking.enabled:
        found += mlflow_lines(tracking_uri(params), run and run.experiment_id)
    else:
        found.append("MLflow is off (tracking.enabled: false): dvc metrics show, dvc plots show have the results")
    found.append("Read your handwriting: python -m stages.predict my_digit.png  (--serve: a page to draw on)")
    found.append(baseline_line(root))
    return found


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    status = int(arguments[0]) if arguments else 0
    try:
        shown = lines(status, project_root())
    except PipelineError as error:  # no metrics after a run that ended well: a stage was removed from dvc.yaml?
        shown = [f"error: {error}"]
    print("\n".join(shown), flush=True)


if __name__ == "__main__":
    main()
