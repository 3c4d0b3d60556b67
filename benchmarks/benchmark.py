"""Benchmark: training speed against plain Keras, memory, the full DVC pipeline and the strong default's accuracy.

    python -m benchmarks.benchmark            # full run on this machine (about 30 min on 2 cores), or `make bench`
    python -m benchmarks.benchmark --quick    # smoke run on mnist-10k, a few minutes

Measures, in one run on the machine it runs on, and writes reports/benchmark.md and reports/benchmark.json:

- training throughput (images/s, median of the epochs after the first) of the train stage (`stages.train.run`,
  unchanged, in its own process) for each preset, in float32 and mixed_bfloat16, against the tutorials' plain Keras
  script (`model.fit` on numpy arrays, float32, same model, batch size, optimizer and data), each in a separate
  process; lenet's test accuracy both ways after the same number of epochs;
- peak RSS of every measured process (os.wait4), and per pipeline stage (psutil polling) in the full run;
- a full `dvc repro` of the default params on full Fashion-MNIST in a temporary git copy of the project, MLflow on:
  wall time per stage, the part that is not training, the test accuracy reached, which processes loaded TensorFlow;
- `dvc repro` with nothing changed, and after changing one `plots.*` key (only plots may run, without TensorFlow);
- the default model on the mnist-10k digits;
- handwriting: the default against augmentation off on held-out digits redrawn in other writers' styles, and
  the calibration error before and after temperature scaling (benchmarks/handwriting.py); the default through the
  reader on digits rendered as photos, single and as numbers (benchmarks/photos.py);
- time to accuracy: recipes (today's default, in float32 too) trained by the stage on mnist-10k, 3 seeds each:
  held-out accuracy, training seconds and CPU-seconds, validation accuracy per epoch, seconds to 99.0% and 99.3%
  (benchmarks/time_to_accuracy.py);
- a 6-run `dvc queue` sweep of small models on mnist-10k, three ways: `-j 1`, `-j 2` with TensorFlow's default
  thread pools, and `-j 2` with STAGES_JOBS=2 (each training's pools sized to its share of the cores);
- the latency table per format (keras, onnx, onnx_int8, litert, litert_int8; benchmarks/latency.py): size,
  held-out accuracy, agreement with Keras, warm one-thread latency, batch throughput, and the cold start of
  `python -m stages.predict --model <file> digit.png`, with its peak RSS and whether TensorFlow was loaded;

and checks each against the targets of issue 7. Throughput runs use the tutorial settings (adam 1e-3, constant
rate, no label smoothing, no early stop) on both sides, with params.yaml's seed and batch size; the stage keeps
everything else it does by default (tf.data feeding, op determinism, checkpoint and resume state every epoch).

Options: --set KEY=VALUE overrides a params.yaml key for the default-params runs (e.g. to measure a proposed
default before it is committed); --sections picks parts (throughput,e2e,mnist,sweep,predict,handwriting,accuracy);
--presets, --epochs, --other-epochs size the throughput runs; --seeds and --recipes the time-to-accuracy runs; --keep
keeps the work folder. Timings are wall-clock: on a shared machine they depend on the load, so the load average is
recorded next to every measurement (and CPU-seconds beside the time-to-accuracy runs' seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import time_to_accuracy, torch_baseline
from benchmarks.efficiency import sgemm_rate
from benchmarks.report import MLFLOW_INFERENCE, NOTES, evaluate_targets, markdown
from stages.core.datasets import DATASETS
from stages.core.project_copy import ROOT, copy_project, paths_under, project_env, set_params

FASHION_SOURCE = Path("/usr/share/datasets/fashion-mnist")
MNIST_10K_SOURCE = DATASETS["mnist_10k"].folder  # the sample shipped in stages/mnist_10k
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
SECTIONS = ("throughput", "e2e", "mnist", "sweep", "predict", "handwriting", "accuracy")
FOLDER_IMAGES = 2000  # held-out digits as PNGs, read by `predict FOLDER --csv`
PREDICT_RUNS = 3  # fresh processes per model file; the median counts
# The latency table's model: LeNet, 3 epochs on the 8,000 mnist-10k training digits, as tests/test_export.py's:
# int8 needs a model sure of its classes (bn_cnn after 2 epochs: 5 digits in 2,000 changed class, gate refused)
PREDICT_MODEL = {"model.architecture": "lenet", "train.epochs": 3, "train.augment.enabled": False}
SWEEP = {"model.architecture": ["single_conv", "conv10", "conv32"], "train.optimizer.name": ["adam", "sgd"]}
SWEEP_WAYS = [  # (label, dvc queue workers, STAGES_JOBS)
    ("-j 1", 1, None),
    ("-j 2, TensorFlow's default thread pools", 2, None),
    ("-j 2, STAGES_JOBS=2 (pools of cores / 2)", 2, "2"),
]
TUTORIAL_TRAINING = {
    "train.optimizer": {"name": "adam", "learning_rate": 1e-3, "kwargs": {}},
    "train.lr_schedule": "constant",
    "train.label_smoothing": 0.0,
    "train.early_stopping.enabled": False,
    "train.target_accuracy": None,
}


# ---------------------------------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    import psutil

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or "unknown")
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    packages = {}
    for name in ("tensorflow", "keras", "numpy", "dvc", "mlflow"):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "cpu_model": model,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "memory_bytes": psutil.virtual_memory().total,
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": packages,
        "load_average_start": list(os.getloadavg()),
    }


# ---------------------------------------------------------------------------------------------------- processes


class Measured:
    """One finished process: exit code, wall seconds, its output, the peak RSS of it and its descendants."""

    def __init__(self, returncode: int, seconds: float, lines: list[tuple[float, str]], max_rss_bytes: int,
                 stage_rss: dict[str, int], spans: dict[str, list[float]]):
        self.returncode, self.seconds, self.lines = returncode, seconds, lines
        self.max_rss_bytes, self.stage_rss, self.spans = max_rss_bytes, stage_rss, spans

    @property
    def output(self) -> str:
        return "".join(line for _, line in self.lines)


def run_measured(command: list[str], cwd: Path, env: dict[str, str], log: Path, timeout: float = 3600) -> Measured:
    """Run a command, timestamp each output line, poll the RSS of its `stages.*` descendants, wait4 for its rusage.

    ru_maxrss from wait4 is the largest peak of the process and every descendant it waited for: exact, but one
    number for the whole tree; the polling (every 0.2 s) attributes peaks to the stage each process runs.
    """
    import psutil

    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1, start_new_session=True)
    stage_rss: dict[str, int] = {}
    spans: dict[str, list[float]] = {}  # process kind -> [first seen, last seen], seconds from the start
    done = threading.Event()

    def poll() -> None:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(process.pid)
            while not done.is_set():
                with contextlib.suppress(psutil.Error):
                    for child in [root, *root.children(recursive=True)]:
                        with contextlib.suppress(psutil.Error):
                            command = " ".join(child.cmdline())
                            match = re.search(r"stages\.(\w+)", command)
                            name = match.group(1) if match else (
                                MLFLOW_INFERENCE if "_capture_modules" in command else "other")
                            stage_rss[name] = max(stage_rss.get(name, 0), child.memory_info().rss)
                            now = time.perf_counter() - started
                            spans.setdefault(name, [now, now])[1] = now
                done.wait(0.2)

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    timer = threading.Timer(timeout, kill)
    timer.start()
    lines: list[tuple[float, str]] = []
    with open(log, "w") as handle:
        for line in process.stdout:
            stamp = time.perf_counter() - started
            lines.append((stamp, line))
            handle.write(f"[{stamp:8.2f}] {line}")
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    timer.cancel()
    done.set()
    poller.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    return Measured(process.returncode, seconds, lines, usage.ru_maxrss * 1024, stage_rss, spans)


def check(measured: Measured, what: str, log: Path) -> Measured:
    if measured.returncode != 0:
        tail = measured.output[-3000:]
        raise SystemExit(f"benchmark: {what} failed with exit code {measured.returncode} (log: {log}):\n{tail}")
    return measured


def run_child(kind: str, spec: dict, work: Path, name: str) -> dict:
    """Run benchmarks.children in its own interpreter; its result plus the wall time and wait4 peak RSS."""
    folder = work / "runs" / name
    folder.mkdir(parents=True, exist_ok=True)
    spec_path, out_path, log = folder / "spec.json", folder / "result.json", folder / "output.log"
    spec_path.write_text(json.dumps(spec, indent=2))
    load_before = os.getloadavg()[0]
    print(f"  {name} ...", end="", flush=True)
    measured = check(run_measured([sys.executable, "-m", "benchmarks.children", kind, str(spec_path), str(out_path)],
                                  cwd=ROOT, env=project_env([ROOT]), log=log), name, log)
    result = json.loads(out_path.read_text())
    result.update(name=name, wall_seconds=round(measured.seconds, 2), max_rss_bytes=measured.max_rss_bytes,
                  load_before=load_before, load_after=os.getloadavg()[0])
    seconds = result["epoch_seconds"]
    steady = seconds[1:] or seconds
    result["images_per_second"] = result["train_images"] / statistics.median(steady)
    cpu_steady = result["epoch_cpu_seconds"][1:] or result["epoch_cpu_seconds"]
    result["images_per_cpu_second"] = result["train_images"] / statistics.median(cpu_steady)
    print(f" {result['images_per_second']:,.0f} img/s, test accuracy {result['test_accuracy']:.4f}, "
          f"load {result['load_after']:.2f}", flush=True)
    return result


# ---------------------------------------------------------------------------------------------------- params


def parse_value(text: str) -> Any:
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(text)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    overrides = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise SystemExit(f"benchmark: --set needs KEY=VALUE, got {item!r}")
        overrides[key.strip()] = parse_value(value)
    return overrides


def default_params(overrides: dict[str, Any]):
    """params.yaml with the --set overrides, validated (a typo fails here, before anything runs)."""
    from stages.core.schema import ParamsError, parse_params, read_yaml, set_dotted

    raw = read_yaml(ROOT / "params.yaml")
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    try:
        return parse_params(raw, "params.yaml + --set")
    except ParamsError as error:
        raise SystemExit(f"benchmark: {error}") from None


def prepare_data(source: Path, dataset: str, base: Path, limit: int | None = None) -> Path:
    """download + preprocess in this process (neither imports TensorFlow); returns the processed folder."""
    from stages import download, preprocess
    from stages import source as source_stage
    from stages.core.schema import parse_params, read_yaml, set_dotted

    raw = read_yaml(ROOT / "params.yaml")
    for key, value in {**paths_under(raw, base), "data.source": str(source),
                       "data.dataset": dataset, "preprocess.limit": limit}.items():
        set_dotted(raw, key, value)
    params = parse_params(raw)
    with contextlib.redirect_stdout(sys.stderr):
        source_stage.run(params)
        download.run(params)
        preprocess.run(params)
    return Path(params.paths.processed)


# ---------------------------------------------------------------------------------------------------- sections


def measure_throughput(config: argparse.Namespace, params, work: Path) -> dict:
    """Each preset: plain Keras float32, then the train stage in mixed_bfloat16 and in float32, same data and batch."""
    source, dataset = (MNIST_10K_SOURCE, "mnist") if config.quick else (config.fashion, "fashion_mnist")
    processed = prepare_data(source, dataset, work / "data-throughput")
    sgemm = sgemm_rate()
    rows = []
    for preset in config.presets:
        epochs = config.epochs if preset == "lenet" else config.other_epochs
        print(f"throughput: {preset}, {epochs} epochs on {dataset}", flush=True)
        keras_run = run_child("keras", {
            "processed": str(processed), "architecture": preset, "epochs": epochs, "seed": params.seed,
            "batch_size": params.train.batch_size,
            "learning_rate": TUTORIAL_TRAINING["train.optimizer"]["learning_rate"],
        }, work, f"{preset}-keras-float32")
        stage_runs = {}
        for precision in ("mixed_bfloat16", "float32"):
            name = f"{preset}-stage-{precision}"
            stage_runs[precision] = run_child("stage", {
                "params_file": str(ROOT / "params.yaml"), "workdir": str(work / "runs" / name),
                "overrides": {
                    **TUTORIAL_TRAINING,
                    "seed": params.seed, "data.dataset": dataset,
                    **paths_under(params.model_dump(), work / "runs" / name), "paths.processed": str(processed),
                    "model.architecture": preset, "model.layers": None, "train.epochs": epochs,
                    "train.batch_size": params.train.batch_size, "train.precision": precision,
                    "tracking.enabled": False,
                },
            }, work, name)
        row = {"preset": preset, "epochs": epochs, "dataset": dataset, "keras_float32": keras_run,
               "stage_mixed_bfloat16": stage_runs["mixed_bfloat16"], "stage_float32": stage_runs["float32"]}
        if preset == "lenet" and torch_baseline.available():
            row["torch_float32"] = run_child("torch", {
                "processed": str(processed), "architecture": preset, "epochs": epochs, "seed": params.seed,
                "batch_size": params.train.batch_size,
                "learning_rate": TUTORIAL_TRAINING["train.optimizer"]["learning_rate"],
            }, work, f"{preset}-torch-float32")
        rows.append(row)
    # Measured again after the trainings: on a shared machine the less disturbed of the two counts.
    after = sgemm_rate()
    sgemm = {key: max(sgemm[key], after[key]) for key in ("flops_per_second", "flops_per_cpu_second")} | {
        key: after[key] for key in ("size", "threads")} | {"runs": sgemm["runs"] + after["runs"],
                                                          "loads": [sgemm["load"], after["load"]]}
    return {"rows": rows, "auto_precision": auto_precision(), "sgemm": sgemm}


def auto_precision() -> str:
    """What `train.precision: auto` picks on this machine (the train stage's own choice; imports TensorFlow)."""
    from stages.core.devices import choose_precision

    return choose_precision("auto")


SITECUSTOMIZE = '''\
import os, sys

def _benchmark_report_tensorflow(event, args):
    # At import, not at exit: a process that never exits normally is counted too.
    if event == "import" and args[0] == "tensorflow":
        main = sys.modules.get("__main__")
        name = getattr(getattr(main, "__spec__", None), "name", None) or os.path.basename(sys.argv[0] or "python")
        with open(os.environ["BENCHMARK_TF_PROBE"], "a") as probe:
            probe.write(f"{name}\\tTrue\\n")

if os.environ.get("BENCHMARK_TF_PROBE"):
    sys.addaudithook(_benchmark_report_tensorflow)
'''


def probed_env(work: Path, project: Path) -> tuple[dict[str, str], Path]:
    """The project's environment with the TensorFlow probe on, and the file where the probe lists its processes."""
    probe_dir = work / "probe"
    probe_dir.mkdir(exist_ok=True)
    (probe_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    probe = work / "tensorflow-probe.tsv"
    return project_env([project, probe_dir], BENCHMARK_TF_PROBE=str(probe)), probe


def stage_seconds(measured: Measured) -> dict[str, float]:
    """Seconds from each `Running stage` line to the next one (or the end): the stage and DVC's bookkeeping of it."""
    starts = [(stamp, match.group(1)) for stamp, line in measured.lines
              if (match := re.search(r"Running stage '([^']+)'", line))]
    seconds = {}
    for index, (stamp, name) in enumerate(starts):
        end = starts[index + 1][0] if index + 1 < len(starts) else measured.seconds
        seconds[name] = round(end - stamp, 2)
    if starts:
        seconds["dvc startup"] = round(starts[0][0], 2)
    return seconds


def stages_run(measured: Measured) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", measured.output)


def read_probe(path: Path) -> list[str]:
    """Modules (python -m) of the processes that imported TensorFlow; the probe file is then emptied."""
    if not path.exists():
        return []
    loaded = sorted({line.split("\t")[0] for line in path.read_text().splitlines() if line.endswith("\tTrue")})
    path.unlink()
    return loaded


def measure_pipeline(config: argparse.Namespace, overrides: dict[str, Any], work: Path) -> dict:
    """Full dvc repro of the default params in a git copy, then a no-op repro and a plots-only repro."""
    source, dataset = (MNIST_10K_SOURCE, "mnist") if config.quick else (config.fashion, "fashion_mnist")
    quick = {"train.epochs": 1} if config.quick else {}
    project = copy_project(work / "project", {"data.source": str(source), "data.dataset": dataset,
                                              **overrides, **quick})
    env, probe = probed_env(work, project)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)

    print(f"pipeline: dvc repro of the default params on {dataset} in {project}", flush=True)
    load_before = os.getloadavg()[0]
    full = check(run_measured(["dvc", "repro"], project, env, logs / "repro-full.log"), "dvc repro", logs)
    load_after = os.getloadavg()[0]
    loaded_full = read_probe(probe)
    from stages.core.schema import read_yaml

    paths = read_yaml(project / "params.yaml")["paths"]
    metrics = json.loads((project / paths["metrics"]).read_text())
    train_seconds = json.loads((project / paths["run"]).read_text())["train_seconds"]
    per_stage = stage_seconds(full)
    print(f"  {full.seconds:.1f} s; per stage {per_stage}; test accuracy {metrics.get('test_accuracy')}", flush=True)

    noop = []
    for attempt in range(3):
        run = check(run_measured(["dvc", "repro"], project, env, logs / f"repro-noop-{attempt}.log"), "no-op repro",
                    logs)
        noop.append({"seconds": round(run.seconds, 2), "stages_run": stages_run(run),
                     "up_to_date": "Data and pipelines are up to date" in run.output})
    read_probe(probe)
    print(f"  no-op repro: {[entry['seconds'] for entry in noop]} s", flush=True)

    dpi = read_yaml(project / "params.yaml")["plots"]["dpi"]
    set_params(project, {"plots.dpi": dpi + 20})
    plots = check(run_measured(["dvc", "repro"], project, env, logs / "repro-plots.log"), "plots-only repro", logs)
    loaded_plots = read_probe(probe)
    subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=project, env=env, check=True, capture_output=True)
    print(f"  plots-only repro: {plots.seconds:.1f} s, stages {stages_run(plots)}, "
          f"TensorFlow loaded by {loaded_plots or 'none'}", flush=True)

    return {
        "dataset": dataset,
        "params": {key: value for key, value in {**overrides, **quick}.items()},
        "full": {
            "seconds": round(full.seconds, 2), "stage_seconds": per_stage, "train_fit_seconds": train_seconds,
            "not_training_seconds": round(full.seconds - train_seconds, 2),
            "max_rss_bytes": full.max_rss_bytes, "stage_peak_rss_bytes": full.stage_rss,
            "process_seconds": {name: round(last - first, 2) for name, (first, last) in full.spans.items()},
            "metrics": metrics, "tensorflow_loaded_by": loaded_full,
            "load_before": load_before, "load_after": load_after,
        },
        "noop": noop,
        "plots_only": {"seconds": round(plots.seconds, 2), "stages_run": stages_run(plots),
                       "key": f"plots.dpi: {dpi} -> {dpi + 20}", "tensorflow_loaded_by": loaded_plots,
                       "max_rss_bytes": plots.max_rss_bytes},
    }


def measure_default_on_mnist(config: argparse.Namespace, params, overrides: dict[str, Any], work: Path) -> dict:
    """The default params (with --set) trained by the stage on the mnist-10k digits, tested on their test split."""
    processed = prepare_data(MNIST_10K_SOURCE, "mnist", work / "data-mnist-10k")
    name = "default-mnist-10k"
    run_overrides = {**overrides, "data.dataset": "mnist", **paths_under(params.model_dump(), work / "runs" / name),
                     "paths.processed": str(processed), "tracking.enabled": False}
    if config.quick:
        run_overrides["train.epochs"] = 1
    print("default params on mnist-10k", flush=True)
    return run_child("stage", {"params_file": str(ROOT / "params.yaml"), "workdir": str(work / "runs" / name),
                               "overrides": run_overrides}, work, name)


def measure_handwriting(config: argparse.Namespace, params, overrides: dict[str, Any], work: Path) -> dict:
    """The default params (with --set) and the same with augmentation off, each trained by the stage on mnist-10k,
    then read on other writers' styles (benchmarks/handwriting.py)."""
    from benchmarks import handwriting

    processed = prepare_data(MNIST_10K_SOURCE, "mnist", work / "data-mnist-10k")
    section: dict[str, Any] = {"digits": 200 if config.quick else handwriting.STYLE_DIGITS}
    for way, extra in (("off", {"train.augment.enabled": False}), ("on", {})):
        name = f"handwriting-augmentation-{way}"
        run_paths = paths_under(params.model_dump(), work / "runs" / name)
        run_overrides = {**overrides, **extra, "data.dataset": "mnist", **run_paths,
                         "paths.processed": str(processed), "tracking.enabled": False}
        if config.quick:
            run_overrides["train.epochs"] = 1
        print(f"handwriting: augmentation {way}", flush=True)
        run_child("stage", {"params_file": str(ROOT / "params.yaml"), "workdir": str(work / "runs" / name),
                            "overrides": run_overrides}, work, name)
        section[way] = handwriting.measure(Path(run_paths["paths.model"]), Path(run_paths["paths.run"]),
                                           processed / "test.npz", MNIST_10K_SOURCE, section["digits"])
    # The default model through the reader, on digits rendered as photos (benchmarks/photos.py).
    section["photos"] = handwriting.photos_of(Path(run_paths["paths.model"]), MNIST_10K_SOURCE, config.quick)
    return section


def wait_for_queue(project: Path, env: dict[str, str], runs: int, timeout: float = 7200) -> str:
    """Wait until `runs` experiments are done; cheap polling (git refs), `dvc queue status` only now and then."""
    deadline = time.monotonic() + timeout
    last_status = time.monotonic()
    while time.monotonic() < deadline:
        refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=project,
                              capture_output=True, text=True).stdout
        # A finished experiment is refs/exps/<baseline sha split 2/38>/<name>; the queue keeps its own refs there too.
        if len(re.findall(r"^refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/", refs, re.M)) >= runs:
            break
        if time.monotonic() - last_status > 15:
            status = subprocess.run(["dvc", "queue", "status"], cwd=project, env=env, capture_output=True, text=True)
            if not any(state in status.stdout for state in ("Queued", "Running")):
                break  # some failed: the status says which
            last_status = time.monotonic()
        time.sleep(0.5)
    return subprocess.run(["dvc", "queue", "status"], cwd=project, env=env, capture_output=True, text=True).stdout


def measure_sweep(config: argparse.Namespace, work: Path) -> dict:
    """Wall time of one 6-run `dvc queue` sweep of small models, three ways, each in a fresh copy of the project."""
    settings = {"data.source": str(MNIST_10K_SOURCE), "data.dataset": "mnist",
                "preprocess.limit": 600 if config.quick else 2000, "train.epochs": 1 if config.quick else 2}
    runs = 1
    for values in SWEEP.values():
        runs *= len(values)
    sets = [argument for key, values in SWEEP.items() for argument in ("-S", f"{key}={','.join(values)}")]
    ways = []
    for index, (label, jobs, share) in enumerate(SWEEP_WAYS):
        project = copy_project(work / f"sweep-{index}", settings)
        env = project_env([project], **({"STAGES_JOBS": share} if share else {}))
        logs = work / f"sweep-{index}-logs"
        logs.mkdir(exist_ok=True)
        # The data once, before the clock: every queued run then restores it from the run-cache.
        check(run_measured(["dvc", "repro", "preprocess"], project, env, logs / "data.log"), "dvc repro", logs)
        check(run_measured(["dvc", "exp", "run", "--queue", *sets], project, env, logs / "queue.log"), "queue", logs)
        print(f"sweep: {runs} runs, {label}", flush=True)
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        # Output to a file, not a pipe: the queue's workers outlive `dvc queue start` and keep what it hands them.
        with open(logs / "start.log", "w") as start_log:
            subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=project, env=env, stdout=start_log,
                           stderr=subprocess.STDOUT, check=True)
        status = wait_for_queue(project, env, runs)
        seconds = time.perf_counter() - started
        subprocess.run(["dvc", "queue", "stop"], cwd=project, env=env, capture_output=True)
        ways.append({"way": label, "jobs": jobs, "STAGES_JOBS": share, "seconds": round(seconds, 1),
                     "succeeded": status.count("Success"), "load_before": load_before,
                     "load_after": os.getloadavg()[0]})
        print(f"  {seconds:.1f} s, {ways[-1]['succeeded']} of {runs} succeeded", flush=True)
    return {"runs": runs, "sweep": SWEEP, "settings": settings, "ways": ways}


def measure_predict(work: Path) -> dict:
    """The latency table (benchmarks/latency.py) of every export format, the files written by `dvc repro export` in
    a copy of the project (MLflow off), the model PREDICT_MODEL. Peak RSS and whether TensorFlow was
    imported, per file, from one more fresh predict."""
    from PIL import Image

    from benchmarks import latency
    from stages.core.datasets import TEST_IMAGES
    from stages.core.formats import FORMATS
    from stages.core.idx import read_idx
    from stages.core.schema import read_yaml

    project = copy_project(work / "predict", {"data.source": str(MNIST_10K_SOURCE), "data.dataset": "mnist",
                                              **PREDICT_MODEL, "tracking.enabled": False,
                                              "export.formats": list(FORMATS)})
    env, probe = probed_env(work, project)
    logs = work / "predict-logs"
    logs.mkdir(exist_ok=True)
    print(f"predict: dvc repro export ({PREDICT_MODEL}, every export format)", flush=True)
    check(run_measured(["dvc", "repro", "export"], project, env, logs / "repro.log"), "dvc repro export", logs)
    read_probe(probe)
    held_out = read_idx(MNIST_10K_SOURCE / TEST_IMAGES)[:FOLDER_IMAGES]
    Image.fromarray(255 - held_out[0]).save(project / "digit.png")
    paths = read_yaml(project / "params.yaml")["paths"]
    files = {"keras": project / paths["model"]}
    files |= {name: project / paths["export_dir"] / FORMATS[name].file for name in latency.FORMATS_MEASURED[1:]}
    table = latency.measure(files, project / paths["processed"] / "test.npz", project / "digit.png", project, env,
                            PREDICT_RUNS)
    folder = project / "held-out-pngs"
    folder.mkdir()
    for index, digit in enumerate(held_out):
        Image.fromarray(255 - digit).save(folder / f"{index:04d}.png")
    table["folder"] = latency.folder_reading({name: files[name] for name in ("keras", "onnx")}, folder, project, env)
    for row in table["rows"]:
        measured = check(run_measured([sys.executable, "-m", "stages.predict", "--model", str(files[row["format"]]),
                                       "digit.png"], project, env, logs / f"{row['format']}.log"),
                         f"predict {row['format']}", logs)
        row |= {"max_rss_bytes": measured.max_rss_bytes, "tensorflow_loaded": bool(read_probe(probe))}
        print(f"  {row['format']}: cold start {row['cold_wall_s']:.2f} s wall, {row['cold_cpu_s']:.2f} s CPU, "
              f"TensorFlow loaded: {row['tensorflow_loaded']}", flush=True)
    return table


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from stages.core.architectures import preset_names

    parser = argparse.ArgumentParser(prog="python -m benchmarks.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: mnist-10k, lenet only, 2 epochs")
    parser.add_argument("--fashion", type=Path, default=FASHION_SOURCE, help="folder with Fashion-MNIST's IDX files")
    parser.add_argument("--presets", default=None, help="comma-separated presets for throughput (default: all)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of each lenet run (default 5)")
    parser.add_argument("--other-epochs", type=int, default=None, help="epochs of the other presets (default 3)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params.yaml key for the default-params runs (repeatable)")
    parser.add_argument("--seeds", default=",".join(map(str, time_to_accuracy.SEEDS)),
                        help="comma-separated seeds of the time-to-accuracy runs")
    parser.add_argument("--recipes", default=",".join(time_to_accuracy.DEFAULT_RECIPES),
                        help=f"comma-separated time-to-accuracy recipes of {', '.join(time_to_accuracy.RECIPES)}")
    parser.add_argument("--output", type=Path, default=ROOT / "reports", help="folder of benchmark.md/.json")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, project copy, models)")
    config = parser.parse_args(argv)
    names = preset_names()
    # lenet first: the throughput and accuracy targets are about it.
    everything = ["lenet", *(name for name in names if name != "lenet")]
    config.presets = config.presets.split(",") if config.presets else (["lenet"] if config.quick else everything)
    unknown = [name for name in config.presets if name not in names]
    if unknown:
        parser.error(f"unknown preset(s) {', '.join(unknown)} (presets: {', '.join(names)})")
    config.epochs = config.epochs or (2 if config.quick else 5)
    config.other_epochs = config.other_epochs or (2 if config.quick else 3)
    config.sections = [section.strip() for section in config.sections.split(",") if section.strip()]
    if set(config.sections) - set(SECTIONS):
        parser.error(f"--sections: choose from {', '.join(SECTIONS)}")
    config.seeds = [int(seed) for seed in config.seeds.split(",")] if config.seeds.replace(",", "").isdigit() else []
    config.recipes = [recipe.strip() for recipe in config.recipes.split(",") if recipe.strip()]
    if not config.seeds or set(config.recipes) - set(time_to_accuracy.RECIPES):
        parser.error(f"--seeds: comma-separated integers; --recipes: of {', '.join(time_to_accuracy.RECIPES)}")
    if not config.quick and not (config.fashion / "train-images-idx3-ubyte.gz").exists():
        parser.error(f"--fashion {config.fashion}: no Fashion-MNIST IDX files there "
                     "(apt-get install dataset-fashion-mnist, or point --fashion at them; --quick needs none)")
    return config


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    overrides = parse_overrides(config.overrides)
    params = default_params(overrides)
    for recipe in config.recipes:  # a recipe's typo fails now, not after the other sections
        default_params({**overrides, **time_to_accuracy.RECIPES[recipe]})
    started_at = datetime.datetime.now().astimezone()
    started = time.perf_counter()
    results: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.benchmark", *(argv if argv is not None else sys.argv[1:])]),
        "started": started_at.isoformat(timespec="seconds"), "quick": config.quick,
        "machine": machine_info(), "overrides": overrides, "notes": list(NOTES),
    }
    work = Path(tempfile.mkdtemp(prefix="mnist-benchmark-"))
    print(f"benchmark: work folder {work}", flush=True)
    try:
        if "throughput" in config.sections:
            results["throughput"] = measure_throughput(config, params, work)
        if "e2e" in config.sections:
            results["pipeline"] = measure_pipeline(config, overrides, work)
        if "mnist" in config.sections:
            results["mnist"] = measure_default_on_mnist(config, params, overrides, work)
        if "sweep" in config.sections:
            results["sweep"] = measure_sweep(config, work)
        if "predict" in config.sections:
            results["predict"] = measure_predict(work)
        if "handwriting" in config.sections:
            results["handwriting"] = measure_handwriting(config, params, overrides, work)
        if "accuracy" in config.sections:
            results["time_to_accuracy"] = time_to_accuracy.measure(config, params, overrides, work, run_child,
                                                                   prepare_data)
    finally:
        if config.keep:
            print(f"benchmark: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["load_average_end"] = list(os.getloadavg())
    results["targets"] = evaluate_targets(results)

    from stages.core.files import write_json, write_text

    config.output.mkdir(parents=True, exist_ok=True)
    write_json(config.output / "benchmark.json", results)
    write_text(config.output / "benchmark.md", markdown(results))
    print(markdown(results))
    print(f"benchmark: wrote {config.output / 'benchmark.md'} and benchmark.json in {results['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
