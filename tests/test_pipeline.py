"""End to end: the real DVC pipeline in a temporary git copy of the project, as a first run on a machine offline.

The official mirrors are a refused port on 127.0.0.1 (through the test-only registry override), so the default
`data.source: auto` falls back to the MNIST sample shipped with the project. One `dvc repro` (with params tracing
on, and TensorFlow's log level left unset) feeds several checks: every record names the sample, TensorFlow starts
quietly, MLflow shows a training experiment with three dataset inputs, dvc.yaml declares exactly the params each
stage reads, a second repro does nothing, DVC's metrics and plots render, a plots-only change reruns plots only,
and a typo passed with `dvc exp run -S` fails the stage with a did-you-mean instead of running with the default.
Last, a local HTTP mirror comes up and the command the fallback warning printed moves the workspace to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import defaultdict
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers.net import LocalServer, QuietHandler, answers, free_port, wait_until
from helpers.params import TINY
from helpers.project import ROOT, project_env, project_paths, set_params, sh
from helpers.servers import require

from stages.core.datasets import FILE_NAMES, TEST_REGISTRY_ENV
from stages.core.entry import EXP_RUN_RESTORE
from stages.core.idx import write_idx


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """The test-only registry override, for every command of this module: MNIST's mirrors are a refused port."""
    path = tmp_path_factory.mktemp("registry") / "registry.json"
    path.write_text(json.dumps({"mnist": {"mirrors": [f"http://127.0.0.1:{free_port()}/mnist/"]}}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TEST_REGISTRY_ENV, str(path))
        yield path


@pytest.fixture(scope="module")
def project(project_copy, tmp_path_factory, registry):
    """The project after one traced `make run` offline with MLflow on (store in the copy's own mlflow.db), its
    environment this Python's (`-o setup`: nothing installed): `dvc repro`'s output in repro.log and repro.err, the
    lines `make run` prints after it in next-steps.log.

    An `mlflow server` on that store starts right after, for the browser test near the end of the module: its
    start-up (tens of seconds on a busy machine) overlaps the tests in between."""
    path = project_copy(tmp_path_factory.mktemp("project"), TINY)  # data.source: its default, auto
    trace = path.parent / "params-trace.tsv"
    env = project_env([path], STAGES_TRACE_PARAMS=str(trace))
    del env["TF_CPP_MIN_LOG_LEVEL"]  # TensorFlow at its default verbosity, as a user runs it
    result = sh(path, "make", "-o", "setup", "run", f"VENV={Path(sys.executable).parents[1]}", env=env)
    echo, _, output = result.stdout.partition("\n")  # make's own line, the command it runs
    assert echo.endswith("/dvc repro"), echo
    repro, last, next_steps = output.partition(DVC_LAST_LINE + "\n")
    assert last, f"`dvc repro` did not end with {DVC_LAST_LINE!r}:\n{output[-3000:]}"
    (path.parent / "repro.log").write_text(repro + last)
    (path.parent / "repro.err").write_text(result.stderr)
    (path.parent / "next-steps.log").write_text(next_steps)
    port = free_port()
    with open(path.parent / "mlflow-server.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{path / 'mlflow.db'}",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=path, env={**project_env([path]), "MLFLOW_DISABLE_TELEMETRY": "true"}, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
    MLFLOW_UI.update(url=f"http://127.0.0.1:{port}", process=server, log=path.parent / "mlflow-server.log")
    yield path
    for sig in (signal.SIGTERM, signal.SIGKILL):  # uvicorn waits for the browser's open connections
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=10)
            break


MLFLOW_UI: dict = {}  # the project's `mlflow server`: url, process, log
DVC_LAST_LINE = "Use `dvc push` to send your updates to remote storage."  # after every `dvc repro` that ran a stage


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_offline_first_run_trains_on_the_shipped_sample_and_every_record_says_so(project):
    import mlflow

    warning = (project.parent / "repro.err").read_text()
    assert warning.count("warning: no official mnist mirror could be reached") == 1
    assert "connection refused" in warning and "10,000 real digits" in warning
    assert read_json(project_paths(project).source) == {"dataset": "mnist_10k", "source": "sample"}
    manifest = read_json(project_paths(project).raw / "mnist" / "manifest.json")
    assert (manifest["dataset"], manifest["sample_of"]) == ("mnist_10k", "mnist")
    counts = {"dataset": "mnist_10k", "train_images": 240, "val_images": 60, "test_images": 2000}
    metrics = read_json(project_paths(project).metrics)
    run_record = read_json(project_paths(project).run)
    assert metrics["dataset"] == "mnist_10k" and {key: run_record[key] for key in counts} == counts
    run = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_run(run_record["run_id"])
    assert (run.data.tags["dataset"], run.data.tags["dataset.sample_of"]) == ("mnist_10k", "mnist")
    shown = json.loads(sh(project, "dvc", "exp", "show", "--json").stdout)
    assert json.dumps(shown).count('"dataset": "mnist_10k"') >= 1  # dvc exp show lists it beside the metrics


def test_tensorflow_stages_start_without_noise(project):
    """No oneDNN, absl, CUDA or CPU-feature lines, while TensorFlow's log level is at its default."""
    log = (project.parent / "repro.log").read_text()
    assert "Running stage 'train'" in log and "Running stage 'evaluate'" in log  # TensorFlow did start, twice
    stderr = (project.parent / "repro.err").read_text()
    for noise in ("cuInit", "oneDNN", "absl::InitializeLog", "cpu_feature_guard", "Could not find cuda drivers"):
        assert noise not in stderr + log, noise


def from_stage(log: str, stage: str) -> list[str]:
    return log[log.index(f"Running stage '{stage}'"):].splitlines()


# What a learner must not see from the train stage on: TensorFlow's C++ log lines (absl's `E0000 00:00:...`
# prefix), terminal escape codes in a log, and MLflow's chatter that is not about this run.
ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w.]+:\d+\]")
MLFLOW_NOISE = ("INFO mlflow", "WARNING mlflow", "UserWarning", "CloudPickle", "Downloading artifacts",
                "Creating initial MLflow database tables")
EPOCH_LINE = re.compile(r"epoch +\d+/\d+  loss \d+\.\d{4}  accuracy \d\.\d{4}  val_loss \d+\.\d{4}  "
                        r"val_accuracy \d\.\d{4}  lr \d\.\d\de[-+]\d\d  \d+\.\d s")


def test_the_train_stage_on_says_what_trains_and_nothing_from_third_parties(project):
    """From `Running stage 'train'` to the end: a line naming what trains before the first epoch, epochs in one
    fixed format, the test line naming its loss, and no noise. stderr is checked whole (only the source stage's
    offline warning and MLflow's registration lines belong there)."""
    log = from_stage((project.parent / "repro.log").read_text(), "train")
    stderr = (project.parent / "repro.err").read_text().splitlines()
    for line in log + stderr:
        assert not ABSL_LINE.match(line) and "\x1b[" not in line, line
        assert not any(noise in line for noise in MLFLOW_NOISE), line
    first_epoch = next(index for index, line in enumerate(log) if line.startswith("epoch "))
    precision = json.loads(project_paths(project).run.read_text())["precision"]  # what `auto` chose on this machine
    assert precision in ("float32", "mixed_bfloat16")
    announced = log[first_epoch - 1]
    assert re.fullmatch(rf"training single_conv \([\d,]+ parameters, {precision}, 1 replica\) on mnist_10k: 240 "
                        r"training and 60 validation images, 1 epochs of batch \d+, .*", announced), announced
    assert all(EPOCH_LINE.fullmatch(line) for line in log if line.startswith("epoch ")), log
    assert any("cross-entropy" in line and "no label smoothing" in line for line in log)
    export = next(index for index, line in enumerate(log) if line == "Running stage 'export':")
    register = next(index for index, line in enumerate(log) if line == "Running stage 'register':")
    assert len(log[:export]) <= 20, "\n".join(log)  # train, evaluate, plots: 20 lines measured, against 32 before
    assert len(log[export:register]) <= 7, "\n".join(log)  # export: 7, a line per format and the float32 gap
    assert len(log[register:]) <= 8, "\n".join(log)  # register: 8, a champion per registered model, one summary


def test_predict_prints_only_its_answer(project):
    """`python -m stages.predict digit.png` on a CPU-only machine, TensorFlow at its default verbosity: the answer,
    and at most one line naming the model that answers."""
    from PIL import Image

    with np.load(project_paths(project).processed / "test.npz") as test:
        Image.fromarray((test["x"][0, :, :, 0] * 255).astype(np.uint8)).save(project / "digit.png")
    env = project_env([project])
    del env["TF_CPP_MIN_LOG_LEVEL"]
    result = sh(project, sys.executable, "-m", "stages.predict", "digit.png", env=env)
    lines = (result.stdout + result.stderr).splitlines()
    answers_ = [line for line in lines if line.startswith("digit.png: ")]
    others = [line for line in lines if line not in answers_]
    assert len(answers_) == 1 and len(others) <= 1 and all("model" in line for line in others), lines


def split_digest(path: Path) -> str:
    """The oracle: sha256 of a split's stored x bytes, then its labels bytes."""
    with np.load(path) as arrays:
        return hashlib.sha256(arrays["x"].tobytes() + arrays["labels"].tobytes()).hexdigest()


def test_mlflow_shows_a_training_experiment_with_three_dataset_inputs(project):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mnist")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    run = client.get_run(read_json(project_paths(project).run)["run_id"])
    inputs = {tags["mlflow.data.context"]: (item.dataset, tags) for item in run.inputs.dataset_inputs
              for tags in [{tag.key: tag.value for tag in item.tags}]}
    assert set(inputs) == {"training", "validation", "test"}
    for context, split in (("training", "train"), ("validation", "val"), ("test", "test")):
        dataset, tags = inputs[context]
        full = split_digest(project_paths(project).processed / f"{split}.npz")
        assert dataset.digest == full[:36] and tags["sha256"] == full
        assert dataset.name.startswith("mnist_10k-")
    assert inputs["test"][0].name == "mnist_10k-held-out"  # never "test": these come from MNIST's training set


NOT_STAGE_PARAMS = {"tracking.uri"}  # read by stages, deliberately not their DVC params


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
        # paths.* are bound to deps and outs through ${paths.*}: DVC already reruns when they change. tracking.uri
        # says only where the runs are logged (127.0.0.1 or localhost, a teammate's URL): no reason to retrain.
        used = {key for key in read[module] if not key.startswith("paths.") and key not in NOT_STAGE_PARAMS}
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


def test_make_run_ends_with_what_to_do_next(project):
    """At most six lines after DVC's: the test accuracy as metrics.json has it, the MLflow link to the experiment
    (its id as run.json records it), predict, and committing dvc.lock, which the copy has not done yet."""
    shown = (project.parent / "next-steps.log").read_text().splitlines()
    assert 1 <= len(shown) <= 6, shown
    accuracy = read_json(project_paths(project).metrics)["test_accuracy"]
    assert shown[0].startswith(f"Test accuracy {accuracy:.4f} on 2,000 held-out mnist_10k digits "
                               f"({TINY['model.architecture']}, 1 epoch)"), shown[0]
    experiment = read_json(project_paths(project).run)["experiment_id"]
    assert any(line.startswith(f"  http://127.0.0.1:5000/#/experiments/{experiment}/runs?") for line in shown), shown
    assert any("python -m stages.predict" in line for line in shown)
    assert any("git add dvc.lock && git commit" in line for line in shown)


def test_dvc_metrics_and_plots_render(project):
    metrics = sh(project, "dvc", "metrics", "show", "--json").stdout
    assert "test_accuracy" in metrics
    table = sh(project, "dvc", "metrics", "show", COLUMNS="120").stdout.splitlines()
    assert "test_accuracy" in table[0] and max(map(len, table)) <= 120, "\n".join(table)
    accuracy = json.loads((project_paths(project).metrics).read_text())["test_accuracy"]
    assert 0.3 < accuracy <= 1.0
    out = project.parent / "plots-html"
    sh(project, "dvc", "plots", "show", "-o", str(out))
    html = (out / "index.html").read_text()
    for title in ("Loss", "Accuracy", "Confusion matrix", "curves.png", "confusion_matrix.png"):
        assert title in html


def test_dvc_plots_show_lists_only_the_intended_plots(project):
    """Stage-level `plots:` would add DVC's default plot of every CSV column against the row index."""
    shown = json.loads(sh(project, "dvc", "plots", "show", "--json").stdout)["data"]
    pngs = [f"{project_paths(project).plots.relative_to(project)}/{name}" for name in
            ("curves.png", "confusion_matrix.png", "misclassified.png", "feature_maps.png")]
    assert sorted(shown) == sorted(["Loss", "Accuracy", "Confusion matrix", *pngs])


def exp_show_lines(project: Path, *options: str) -> list[str]:
    return sh(project, "dvc", "exp", "show", "--no-pager", *options, COLUMNS="120").stdout.splitlines()


def test_dvc_exp_show_shows_the_test_accuracy_in_a_120_column_terminal(project):
    """The README's --drop/--keep line: the experiment, test_accuracy (metrics.json's order puts it first among the
    metrics) and the knobs people vary, in 120 columns. Plain `dvc exp show` has ~160 columns (params, a hash per
    code file), and DVC gives each at least its padding: below ~200 columns it shows "…" alone."""
    accuracy = read_json(project_paths(project).metrics)["test_accuracy"]
    shown = f"{accuracy:.4g}"
    readme = (project / "README.md").read_text()
    documented = re.search(r"^dvc exp show --drop '[^']*' --keep '[^']*'", readme, re.MULTILINE).group(0)
    kept = exp_show_lines(project, *shlex.split(documented)[3:])
    assert max(len(line) for line in kept) <= 120
    header = next(line for line in kept if "Experiment" in line)
    assert "test_accuracy" in header and "dataset" in header and "model.architecture" in header, "\n".join(kept)
    assert shown in next(line for line in kept if "workspace" in line)
    # Plain, where it fits: metrics.json's first metric (not export's check figures) is the first metric column.
    wide = sh(project, "dvc", "exp", "show", "--no-pager", COLUMNS="250").stdout.splitlines()
    header = next(line for line in wide if "Experiment" in line).split()
    metrics = [name for name in header if name not in ("Experiment", "Created", "State", "Executor")]
    assert metrics[0] == "test_accuracy", "\n".join(wide)


def test_mlflow_pages_show_the_run_and_its_logged_model(project, tmp_path):
    """Headless Chromium on `mlflow server`'s run page and logged-model page (what they show, not pixels), and the
    offline `dvc plots show` page drawing its charts with every network request refused."""
    require("/usr/bin/chromium", "Debian's chromium")
    from playwright.sync_api import sync_playwright

    url, server = MLFLOW_UI["url"], MLFLOW_UI["process"]
    wait_until(lambda: answers(f"{url}/api/2.0/mlflow/experiments/search?max_results=1"), 180,
               f"mlflow server on {url}", server, MLFLOW_UI["log"])
    record = read_json(project_paths(project).run)
    import mlflow

    experiment = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_run(record["run_id"]).info.experiment_id
    out = tmp_path / "plots-html"
    sh(project, "dvc", "plots", "show", "-o", str(out))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        context = browser.new_context(viewport={"width": 1600, "height": 1100})
        # The "Model training" toggle's memory: without it the UI's sidebar falls back to GenAI on a click.
        context.add_init_script("localStorage.setItem('mlflow.workflowType_v1', JSON.stringify('machine_learning'))")
        page = context.new_page()
        page.goto(f"{url}/#/experiments/{experiment}/runs/{record['run_id']}")
        page.get_by_text("train.epochs").first.wait_for(timeout=90_000)
        text = page.locator("body").inner_text()
        assert "model.architecture" in text and "test_accuracy" in text
        assert "paths." not in text, "paths are no knob of a run"
        page.goto(f"{url}/#/experiments/{experiment}/models/{record['model_id']}")
        page.get_by_text("Datasets used").first.wait_for(timeout=90_000)
        page.get_by_text("mnist_10k-held-out").first.wait_for(timeout=30_000)
        text = page.locator("body").inner_text()
        assert TINY["model.architecture"] in text and "test_accuracy" in text
        for split in ("train", "val", "held-out"):  # one metric row per split, each naming its dataset
            assert f"mnist_10k-{split} (#" in text, split
        assert "system/" not in text, "how long it trained is no score of the model"

        page = context.new_page()
        page.route("**/*", lambda route: route.abort() if route.request.url.startswith("http") else route.continue_())
        page.goto((out / "index.html").as_uri())
        page.wait_for_function("document.querySelectorAll('.vega-embed svg, .vega-embed canvas').length >= 3",
                               timeout=30_000)
        browser.close()


def visible_in(page, locator, width: int, height: int) -> bool:
    """Whether the element lies inside the window as it is, the page not scrolled (bounding_box never scrolls)."""
    box = locator.bounding_box()
    scrolled = page.evaluate("[window.scrollX, window.scrollY]")
    return (box is not None and scrolled == [0, 0] and box["x"] >= 0 and box["y"] >= 0
            and box["x"] + box["width"] <= width and box["y"] + box["height"] <= height)


def test_mlflow_leads_with_the_test_accuracy_in_a_1280x800_window(project, tmp_path):
    """Chromium in a 1280x800 window on the page `make run` printed (the experiment's runs through the saved view,
    as charts and as a table) and on the run's page: each shows test_accuracy's value, as metrics.json has it,
    without scrolling. Set here as a user sets it once, since MLflow leaves it to the browser: the assistant panel
    MLflow opens on a first visit, closed. Screenshots in the test's tmp_path (mlflow-*.png)."""
    require("/usr/bin/chromium", "Debian's chromium")
    from playwright.sync_api import sync_playwright

    url, server = MLFLOW_UI["url"], MLFLOW_UI["process"]
    wait_until(lambda: answers(f"{url}/api/2.0/mlflow/experiments/search?max_results=1"), 180,
               f"mlflow server on {url}", server, MLFLOW_UI["log"])
    accuracy = read_json(project_paths(project).metrics)["test_accuracy"]
    record = read_json(project_paths(project).run)
    printed = next(line.strip() for line in (project.parent / "next-steps.log").read_text().splitlines()
                   if line.strip().startswith("http://127.0.0.1:5000/#/experiments/"))
    charts = printed.replace("http://127.0.0.1:5000", url)
    width, height = 1280, 800
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        context = browser.new_context(viewport={"width": width, "height": height})
        context.add_init_script("localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true')")
        page = context.new_page()

        page.goto(charts)  # no workflowType stored: the link itself opens the training view
        card = page.get_by_test_id("experiment-view-compare-runs-chart-area").locator(
            "div", has=page.get_by_text("test_accuracy", exact=True)).filter(has_text=f"{accuracy:.2f}").last
        card.wait_for(timeout=90_000)
        page.wait_for_timeout(1000)  # the charts draw after the data arrives
        page.screenshot(path=tmp_path / "mlflow-charts.png")
        assert visible_in(page, card, width, height), "the test_accuracy chart is out of view"

        page.goto(charts.replace("compareRunsMode=CHART", "compareRunsMode=TABLE"))
        cell = page.get_by_role("gridcell", name=f"{accuracy:.4f}").first
        cell.wait_for(timeout=90_000)
        page.screenshot(path=tmp_path / "mlflow-table.png")
        assert visible_in(page, cell, width, height), "the test_accuracy column is out of view"

        page.goto(f"{url}/#/experiments/{record['experiment_id']}/runs/{record['run_id']}")
        row = page.get_by_role("row").filter(has=page.get_by_text("test_accuracy", exact=True)).first
        row.wait_for(timeout=90_000)
        page.screenshot(path=tmp_path / "mlflow-run.png")
        assert f"{accuracy:.4f}" in row.inner_text()
        assert visible_in(page, row, width, height), "the run page's test_accuracy is out of view"
        browser.close()


def test_only_stages_whose_params_changed_rerun(project):
    try:
        set_params(project, {"plots.dpi": 60})
        plots_only = sh(project, "dvc", "repro").stdout
        assert "Running stage 'plots'" in plots_only
        assert "Running stage 'train'" not in plots_only and "Running stage 'evaluate'" not in plots_only

        set_params(project, {"tracking.uri": "http://localhost:5000"})  # where runs are logged: nothing retrains
        assert set(json.loads(sh(project, "dvc", "status", "--json").stdout)) == {"params"}
        set_params(project, {"tracking.uri": None})

        set_params(project, {"train.epochs": 2})
        status = json.loads(sh(project, "dvc", "status", "--json").stdout)
        assert set(status) == {"params", "train"}  # params: the validation stage reruns on any edit
    finally:
        sh(project, "git", "checkout", "--", "params.yaml")
    assert "Running stage 'train'" not in sh(project, "dvc", "repro").stdout  # run-cache restores the original


def test_typo_on_the_command_line_fails_with_did_you_mean(project):
    # DVC 3.6x refuses a plain unknown key itself; `+key=value` (Hydra's append) writes it into params.yaml,
    # and then only the schema stands between the typo and a run with the default.
    # The README's two examples, with the lines it shows.
    readme = (ROOT / "docs" / "configuration.md").read_text()
    plain = sh(project, "dvc", "exp", "run", "-S", "preprocess.val_fraktion=0.1", check=False)
    assert plain.returncode != 0
    refusal = "To append to your config use +preprocess.val_fraktion=0.1: Key 'val_fraktion' is not in struct"
    assert refusal in plain.stdout + plain.stderr and refusal in " ".join(readme.split())
    assert "val_fraktion" not in (project / "params.yaml").read_text()
    try:
        # What the docs say `dvc exp run -S` does to params.yaml: the comments stay, an inline list is unrolled
        # (the shipped params.yaml writes export.formats inline; the copy's TINY settings wrote it one per line).
        assert "  formats: [onnx, litert]" in (ROOT / "params.yaml").read_text()
        text = (project / "params.yaml").read_text()
        inline = re.sub(r"^  formats:( +# .*)\n  - onnx\n", r"  formats: [onnx]\1\n", text, flags=re.MULTILINE)
        assert inline != text
        (project / "params.yaml").write_text(inline)
        result = sh(project, "dvc", "exp", "run", "-S", "+preprocess.val_fraktion=0.1", check=False)
        written = (project / "params.yaml").read_text()
        assert "val_fraktion" in written, "DVC added the key"
        assert re.search(r"^  formats: +# .*\n  - onnx\n", written, re.MULTILINE), written
        assert "`formats: [onnx, litert]` becomes `formats:`, `- onnx`, `- litert`" in " ".join(readme.split())
        assert result.returncode != 0
        output = result.stdout + result.stderr
        for line in ("error: params.yaml is invalid:\n", f"{EXP_RUN_RESTORE}\n",
                     "\n  preprocess.val_fraktion: unknown key; did you mean 'val_fraction'? (allowed here: "
                     "val_fraction, limit"):  # the README shortens the list of allowed keys
            assert line in f"\n{output}" and line in readme, line
        assert "Running stage 'train'" not in result.stdout
    finally:
        sh(project, "git", "checkout", "--", "params.yaml")


@pytest.mark.timeout(900)  # the queue's own deadline (600 s) fails first, with the workers' logs
def test_queued_experiments_land_in_the_project_store_and_compare_ranks_them(project):
    import mlflow

    names = []
    for architecture in ("conv10", "conv32"):  # not the baseline, which the run-cache restores
        queued = sh(project, "dvc", "exp", "run", "--queue", "-S", f"model.architecture={architecture}")
        names.append(re.search(r"Queued experiment '([^']+)'", queued.stdout).group(1))
    def start_workers() -> None:
        # The workers inherit the starting command's output: a file, not a pipe this test would wait on until they end.
        with open(project.parent / "queue-start.log", "a") as log:
            subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=project, env=project_env([project]), stdout=log,
                           stderr=subprocess.STDOUT, check=True, timeout=120)

    start_workers()
    try:
        deadline = time.monotonic() + 600
        while True:
            status = sh(project, "dvc", "queue", "status").stdout
            if not any(state in status for state in ("Queued", "Running")):
                break
            assert time.monotonic() < deadline, status + "\n".join(
                path.read_text()[-2000:] for path in (project / ".dvc" / "tmp" / "exps" / "celery").glob("*.out"))
            if "Queued" in status and "Running" not in status and "0 active" in status:
                start_workers()  # DVC's workers can stop with tasks still queued (treeverse/dvc#10562)
            time.sleep(2)
    finally:
        sh(project, "dvc", "queue", "stop", "--kill", check=False)
        # A worker whose idle monitor fired while its task ran stays up, idle, whatever `queue stop` says (DVC 3.67).
        for pidfile in (project / ".dvc" / "tmp" / "exps" / "celery").glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                pid = int(pidfile.read_text())
                if b"queue-worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
    assert status.count("Success") >= 2, status

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mnist")
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'")
    by_exp = {run.data.tags.get("dvc.exp_name"): run for run in runs}
    assert set(names) <= set(by_exp), f"queued {names}, store has {sorted(filter(None, by_exp))}"
    for name in names:
        assert "test_accuracy" in by_exp[name].data.metrics

    sh(project, "python", "-m", "stages.compare")
    table = (project_paths(project).compare).read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].split("|")]
    rows = [[cell.strip() for cell in line.split("|")] for line in lines[1:]]
    accuracies = [float(row[header.index("test accuracy")]) for row in rows]
    assert len(rows) >= 3 and accuracies == sorted(accuracies, reverse=True)
    assert all(name in table for name in names)
    assert (project_paths(project).compare_plot).stat().st_size > 0


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP mirror serving generated MNIST-format files (300 training, 100 test images) from a folder."""
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, size=(300, 28, 28), dtype=np.uint8), (np.arange(300) % 10).astype(np.uint8),
              rng.integers(0, 256, size=(100, 28, 28), dtype=np.uint8), (np.arange(100) % 10).astype(np.uint8)]
    folder = tmp_path / "mirror" / "mnist"
    folder.mkdir(parents=True)
    for name, array in zip(FILE_NAMES, arrays, strict=True):
        write_idx(folder / name, array)
    class Files(SimpleHTTPRequestHandler, QuietHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder.parent), **kwargs)

    with LocalServer(Files) as server:
        yield f"{server.url}/mnist/", folder


def test_back_online_the_printed_command_moves_the_workspace_to_the_full_set(project, registry, mirror):
    import mlflow

    url, folder = mirror
    # The mirror comes up, serving files registered (as "mnist") with their checksums.
    registry.write_text(json.dumps({"mnist": {"mirrors": [url], "known_digests": {
        name: [hashlib.sha256((folder / name).read_bytes()).hexdigest()] for name in FILE_NAMES}}}))
    unchanged = sh(project, "dvc", "repro").stdout  # the network's state is no dep of any stage
    assert "Running stage 'source'" not in unchanged and "Running stage 'train'" not in unchanged

    warning = (project.parent / "repro.err").read_text()
    command = warning.split("get the full set with: ")[1].splitlines()[0].split()
    assert command[:4] == ["dvc", "exp", "run", "-S"]
    switched = sh(project, *command).stdout
    assert "Running stage 'train'" in switched and "is cached" not in switched
    record = read_json(project_paths(project).run)
    assert read_json(project_paths(project).metrics)["dataset"] == "mnist"
    assert (record["dataset"], record["train_images"] + record["val_images"], record["test_images"]) == \
        ("mnist", 300, 100)
    manifest = read_json(project_paths(project).raw / "mnist" / "manifest.json")
    assert manifest["dataset"] == "mnist" and all(entry["verified"] for entry in manifest["files"].values())
    run = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_run(
        read_json(project_paths(project).run)["run_id"])
    assert run.data.tags["dataset"] == "mnist" and "dataset.sample_of" not in run.data.tags
    assert {item.dataset.name for item in run.inputs.dataset_inputs} == {"mnist-train", "mnist-val", "mnist-test"}

    # Back to auto while online: the source stage probes again rather than replaying the offline decision from
    # the run-cache, finds the mirror, and nothing else has to change.
    again = sh(project, "dvc", "exp", "run", "-S", "data.source=auto").stdout
    assert "Running stage 'source'" in again and "Running stage 'train'" not in again
    assert read_json(project_paths(project).metrics)["dataset"] == "mnist"
