"""End to end: the real DVC pipeline in a temporary git copy of the project, on the real mnist-10k digits.

One `dvc repro` (with params tracing on) feeds several checks: dvc.yaml declares exactly the params each stage
reads, a second repro does nothing, DVC's metrics and plots render, a plots-only change reruns plots only, and a
typo passed with `dvc exp run -S` fails the stage with a did-you-mean instead of running with the default.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict

import pytest
import yaml

from benchmarks.project_copy import copy_project, project_env, set_params, sh

pytestmark = pytest.mark.slow

QUICK = {
    "preprocess.limit": 600,
    "model.architecture": "conv10",
    "train.epochs": 1,
}


@pytest.fixture(scope="module")
def project(tmp_path_factory, mnist_10k):
    """The project after one traced `dvc repro` with MLflow on (store in the copy's own mlflow.db)."""
    path = copy_project(tmp_path_factory.mktemp("project"), {**QUICK, "data.source": str(mnist_10k)})
    trace = path.parent / "params-trace.tsv"
    result = sh(path, "dvc", "repro", env=project_env([path], STAGES_TRACE_PARAMS=str(trace)))
    (path.parent / "repro.log").write_text(result.stdout + result.stderr)
    return path


def declared_params(stage: dict) -> list[str]:
    keys = []
    for entry in stage.get("params", []):
        keys.extend([entry] if isinstance(entry, str) else [k for values in entry.values() for k in values])
    return keys


def test_dvc_yaml_declares_exactly_the_params_each_stage_reads(project):
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    read: dict[str, set[str]] = defaultdict(set)
    for line in (project.parent / "params-trace.tsv").read_text().splitlines():
        module, key = line.split("\t")
        read[module].add(key)
    for name, stage in stages.items():
        module = stage["cmd"].split("-m", 1)[1].split()[0]
        assert module in read, f"stage {name} ({module}) never ran under the params trace"
        # paths.* are bound to deps and outs through ${paths.*}: DVC already reruns when they change.
        used = {key for key in read[module] if not key.startswith("paths.")}
        declared = declared_params(stage)

        def covers(declared_key: str, key: str) -> bool:
            return key == declared_key or key.startswith(declared_key + ".")

        undeclared = sorted(key for key in used if not any(covers(d, key) for d in declared))
        unread = sorted(d for d in declared if not any(covers(d, key) for key in used))
        assert not undeclared, f"stage {name} reads params not declared in dvc.yaml (stale cache): {undeclared}"
        assert not unread, f"stage {name} declares params its code never reads (needless reruns): {unread}"


def test_second_repro_has_nothing_to_do(project):
    result = sh(project, "dvc", "repro")
    assert "Data and pipelines are up to date" in result.stdout
    assert "Running stage" not in result.stdout


def test_dvc_metrics_and_plots_render(project):
    metrics = sh(project, "dvc", "metrics", "show", "--json").stdout
    assert "test_accuracy" in metrics
    accuracy = json.loads((project / "reports" / "metrics.json").read_text())["test_accuracy"]
    assert 0.3 < accuracy <= 1.0
    out = project.parent / "plots-html"
    sh(project, "dvc", "plots", "show", "-o", str(out))
    html = (out / "index.html").read_text()
    for title in ("Loss", "Accuracy", "Confusion matrix", "curves.png", "confusion_matrix.png"):
        assert title in html


def test_only_stages_whose_params_changed_rerun(project):
    try:
        set_params(project, {"plots.dpi": 60})
        plots_only = sh(project, "dvc", "repro").stdout
        assert "Running stage 'plots'" in plots_only
        assert "Running stage 'train'" not in plots_only and "Running stage 'evaluate'" not in plots_only

        set_params(project, {"train.epochs": 2})
        status = json.loads(sh(project, "dvc", "status", "--json").stdout)
        assert set(status) == {"params", "train"}  # params: the validation stage reruns on any edit
    finally:
        sh(project, "git", "checkout", "--", "params.yaml")
    assert "Running stage 'train'" not in sh(project, "dvc", "repro").stdout  # run-cache restores the original


def test_typo_on_the_command_line_fails_with_did_you_mean(project):
    # DVC 3.6x refuses a plain unknown key itself; `+key=value` (Hydra's append) writes it into params.yaml,
    # and then only the schema stands between the typo and a run with the default.
    assert sh(project, "dvc", "exp", "run", "-S", "preprocess.val_fraktion=0.1", check=False).returncode != 0
    try:
        result = sh(project, "dvc", "exp", "run", "-S", "+preprocess.val_fraktion=0.1", check=False)
        assert "val_fraktion" in (project / "params.yaml").read_text(), "DVC added the key"
        assert result.returncode != 0
        assert "preprocess.val_fraktion: unknown key; did you mean 'val_fraction'?" in result.stdout + result.stderr
        assert "Running stage 'train'" not in result.stdout
    finally:
        sh(project, "git", "checkout", "--", "params.yaml")


def test_queued_experiments_land_in_the_project_store_and_compare_ranks_them(project):
    import mlflow

    names = []
    for architecture in ("single_conv", "conv32"):  # not the baseline conv10, which the run-cache restores
        queued = sh(project, "dvc", "exp", "run", "--queue", "-S", f"model.architecture={architecture}")
        names.append(re.search(r"Queued experiment '([^']+)'", queued.stdout).group(1))
    sh(project, "dvc", "queue", "start", "-j", "2")
    try:
        deadline = time.monotonic() + 600
        while True:
            status = sh(project, "dvc", "queue", "status").stdout
            if not any(state in status for state in ("Queued", "Running")):
                break
            assert time.monotonic() < deadline, status
            time.sleep(2)
    finally:
        sh(project, "dvc", "queue", "stop", "--kill", check=False)
    assert status.count("Success") >= 2, status

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mnist")
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'")
    by_exp = {run.data.tags.get("dvc.exp_name"): run for run in runs}
    assert set(names) <= set(by_exp), f"queued {names}, store has {sorted(filter(None, by_exp))}"
    for name in names:
        assert "test_accuracy" in by_exp[name].data.metrics

    sh(project, "python", "-m", "stages.compare")
    table = (project / "reports" / "compare.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "test accuracy" not in line]
    accuracies = [float(row.split("|")[8]) for row in rows]
    assert len(rows) >= 3 and accuracies == sorted(accuracies, reverse=True)
    assert all(name in table for name in names)
    assert (project / "reports" / "compare.png").stat().st_size > 0
