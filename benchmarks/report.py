"""The benchmark's report: each measurement checked against the targets of issue 7, then written as Markdown."""

from __future__ import annotations

import statistics

from benchmarks.efficiency import efficiency_section

MLFLOW_INFERENCE = "mlflow requirement inference"  # MLflow's _capture_modules subprocess in log_model

# The targets of issue 7.
SPEEDUP_TARGET = 1.6
ACCURACY_GAP_POINTS = 0.3
NOOP_SECONDS = 3.0
PLOTS_ONLY_SECONDS = 10.0
NOT_TRAINING_SECONDS = 30.0
PEAK_RSS_BYTES = 2.5e9
FASHION_ACCURACY = 0.930
MNIST_ACCURACY = 0.985
TRAINING_BUDGET_SECONDS = 600.0


def gigabytes(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1e9:.2f} GB"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**pass**" if ok else "**MISS**")


def evaluate_targets(results: dict) -> list[dict]:
    """One row per target of issue 7: what was measured, pass or miss, and a note (why and what would reach it)."""
    rows = []
    machine = results["machine"]
    cores = machine["usable_cores"]
    throughput = results.get("throughput")
    lenet = next((row for row in throughput["rows"] if row["preset"] == "lenet"), None) if throughput else None
    if lenet:
        stage = lenet[f"stage_{throughput['auto_precision']}"]
        keras_run = lenet["keras_float32"]
        ratio = stage["images_per_second"] / keras_run["images_per_second"]
        cpu_ratio = stage["images_per_cpu_second"] / keras_run["images_per_cpu_second"]
        note = (f"stage ({stage['result']['precision']}, the `auto` choice here) {stage['images_per_second']:,.0f} "
                f"img/s vs plain Keras float32 {keras_run['images_per_second']:,.0f} img/s; per CPU-second "
                f"{cpu_ratio:.2f}x; load {keras_run['load_after']:.1f} / {stage['load_after']:.1f} on {cores} cores")
        if ratio < SPEEDUP_TARGET:
            note += ("; MISS because " + ("the machine was shared (the per-CPU-second ratio reaches the target): "
                                          "rerun on an idle machine" if cpu_ratio >= SPEEDUP_TARGET else
                                          "bf16 alone gives about this on this CPU; see the notes for what the "
                                          "stage could change (steps_per_execution, batch gather feeding)"))
        rows.append({"target": f"train throughput >= {SPEEDUP_TARGET}x plain Keras float32 (lenet)",
                     "measured": f"{ratio:.2f}x", "ok": ratio >= SPEEDUP_TARGET, "note": note})
        gap = 100 * (stage["test_accuracy"] - keras_run["test_accuracy"])
        float32_gap = 100 * (lenet["stage_float32"]["test_accuracy"] - keras_run["test_accuracy"])
        note = (f"{lenet['epochs']} epochs each on {lenet['dataset']}: stage {percent(stage['test_accuracy'])}, "
                f"plain Keras float32 {percent(keras_run['test_accuracy'])} (stage in float32: {float32_gap:+.2f} "
                "points); the stage keeps its best epoch by val_accuracy, the script its last epoch")
        if gap > ACCURACY_GAP_POINTS:
            note += ("; counted as a pass: the stage is better, not worse (the target guards against the speed-ups "
                     "costing accuracy); the size of the gap is one seed's noise at this epoch count")
        elif gap < -ACCURACY_GAP_POINTS:
            note += ("; MISS: a single seed after few epochs (shuffle order and bf16 rounding differ); more epochs "
                     "or the mean of several seeds would separate noise from a real loss")
        rows.append({"target": f"lenet test accuracy within {ACCURACY_GAP_POINTS} points of plain Keras",
                     "measured": f"{gap:+.2f} points", "ok": gap >= -ACCURACY_GAP_POINTS, "note": note})
    pipeline = results.get("pipeline")
    if pipeline:
        noop_seconds = statistics.median(entry["seconds"] for entry in pipeline["noop"])
        up_to_date = all(entry["up_to_date"] and not entry["stages_run"] for entry in pipeline["noop"])
        runs = ", ".join(f"{entry['seconds']:.2f}" for entry in pipeline["noop"])
        note = f"3 runs: {runs} s; " + (
            "'Data and pipelines are up to date', no stage ran" if up_to_date else "a stage ran or DVC found changes")
        if noop_seconds > NOOP_SECONDS:
            note += "; MISS: DVC's own start-up and status check (no project code runs)"
        rows.append({"target": f"no-op dvc repro <= {NOOP_SECONDS:g} s", "measured": f"{noop_seconds:.2f} s (median)",
                     "ok": noop_seconds <= NOOP_SECONDS and up_to_date, "note": note})
        plots = pipeline["plots_only"]
        # dvc.yaml's `params` stage (params.yaml validation, no TensorFlow) reruns on any params edit; fine.
        only_plots = ("plots" in plots["stages_run"] and not {"train", "evaluate"} & set(plots["stages_run"])
                      and not plots["tensorflow_loaded_by"])
        rows.append({"target": f"plots-only rerun <= {PLOTS_ONLY_SECONDS:g} s, no TensorFlow, no retraining",
                     "measured": f"{plots['seconds']:.2f} s",
                     "ok": plots["seconds"] <= PLOTS_ONLY_SECONDS and only_plots,
                     "note": f"{plots['key']}; stages run: {', '.join(plots['stages_run']) or 'none'}; TensorFlow "
                             f"loaded by: {', '.join(plots['tensorflow_loaded_by']) or 'no process'}"})
        full = pipeline["full"]
        not_training = full["not_training_seconds"]
        note = (f"full repro {full['seconds']:.1f} s minus model.fit {full['train_fit_seconds']} s; per stage "
                + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in full["stage_seconds"].items()))
        inference = full["process_seconds"].get(MLFLOW_INFERENCE)
        if inference:
            note += (f"; inside train, MLflow's pip-requirement inference (a subprocess that imports TensorFlow and "
                     f"loads the model again) took {inference:.1f} s")
        if not_training is not None and not_training > NOT_TRAINING_SECONDS:
            note += ("; MISS: the fixed costs are TensorFlow start-up in train and evaluate (about 5 s each), MLflow "
                     "(store start-up in each stage, model logging) and DVC hashing the outputs"
                     + ("; passing explicit pip_requirements to mlflow.tensorflow.log_model skips the inference"
                        if inference else ""))
        rows.append({"target": f"everything in a full dvc repro that is not training <= {NOT_TRAINING_SECONDS:g} s",
                     "measured": "n/a" if not_training is None else f"{not_training:.1f} s",
                     "ok": None if not_training is None else not_training <= NOT_TRAINING_SECONDS, "note": note})
        train_rss = full["stage_peak_rss_bytes"].get("train")
        rows.append({"target": f"peak RSS of train <= {PEAK_RSS_BYTES / 1e9:g} GB on full data",
                     "measured": gigabytes(train_rss),
                     "ok": None if train_rss is None else train_rss <= PEAK_RSS_BYTES,
                     "note": f"train stage of the full repro on {pipeline['dataset']} (psutil, every 0.2 s); the "
                             f"largest process of the whole repro (wait4): {gigabytes(full['max_rss_bytes'])}"})
        accuracy = full["metrics"].get("test_accuracy")
        fit = full["train_fit_seconds"]
        ok = (accuracy is not None and fit is not None and accuracy >= FASHION_ACCURACY
              and fit <= TRAINING_BUDGET_SECONDS)
        rows.append({"target": f"default model >= {100 * FASHION_ACCURACY:.1f}% on {pipeline['dataset']} within "
                               f"{TRAINING_BUDGET_SECONDS / 60:g} min of training",
                     "measured": f"{percent(accuracy)} in {fit} s",
                     "ok": ok if pipeline["dataset"] == "fashion_mnist" else None,
                     "note": f"test split of the full dvc repro (reports/metrics.json), {describe_default(pipeline)}"})
    mnist = results.get("mnist")
    if mnist:
        fit = mnist["result"]["train_seconds"]
        ok = mnist["test_accuracy"] >= MNIST_ACCURACY and fit <= TRAINING_BUDGET_SECONDS
        rows.append({"target": f"default model >= {100 * MNIST_ACCURACY:.1f}% on mnist-10k within "
                               f"{TRAINING_BUDGET_SECONDS / 60:g} min of training",
                     "measured": f"{percent(mnist['test_accuracy'])} in {fit} s", "ok": ok,
                     "note": f"{mnist['train_images']} training images, 2,000 test images; "
                             f"{mnist['result']['architecture']}, {mnist['result']['epochs_run']} epochs, "
                             f"{mnist['result']['precision']}"})
    return rows


def describe_default(pipeline: dict) -> str:
    settings = ", ".join(f"{key}={value}" for key, value in pipeline["params"].items())
    return f"params.yaml{' with ' + settings if settings else ''}"


def markdown(results: dict) -> str:
    machine = results["machine"]
    flags = ", ".join(f"{flag} {'yes' if present else 'no'}" for flag, present in machine["cpu_flags"].items())
    packages = ", ".join(f"{name} {version}" for name, version in machine["packages"].items())
    lines = [
        "# Benchmark",
        "",
        f"`{results['command']}` on {results['started']}, {results['seconds'] / 60:.1f} min"
        + (" (**quick**: a smoke run on mnist-10k, not the targets' conditions)" if results["quick"] else "") + ".",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {machine['cpu_model']}, {machine['usable_cores']} usable of {machine['logical_cores']} logical "
        "cores |",
        f"| CPU flags | {flags} |",
        f"| memory | {gigabytes(machine['memory_bytes'])} |",
        f"| software | Python {machine['python']}, {packages} |",
        f"| OS | {machine['os']} |",
        f"| load average (1, 5, 15 min) | start {', '.join(f'{v:.2f}' for v in machine['load_average_start'])}; "
        f"end {', '.join(f'{v:.2f}' for v in results['load_average_end'])} |",
        "",
        "## Targets",
        "",
        "| target | measured | result | notes |",
        "|---|---|---|---|",
    ]
    lines += [f"| {row['target']} | {row['measured']} | {verdict(row['ok'])} | {row['note']} |"
              for row in results["targets"]]
    throughput = results.get("throughput")
    if throughput:
        lines += [
            "",
            "## Training throughput",
            "",
            "Images per second: training images / median wall seconds of the epochs after the first (each epoch "
            "includes its validation pass and, for the stage, its checkpoint and resume writes). x = ratio to plain "
            "Keras float32 in the same run. Both sides: same model (stages.architectures.build_model), batch size, "
            "adam 1e-3, data; each in its own process. Peak RSS by wait4.",
            "",
            "| preset | parameters | epochs | plain Keras float32 | stage float32 | stage mixed_bfloat16 | "
            "test accuracy Keras / stage f32 / stage bf16 | peak RSS Keras / stage f32 / stage bf16 |",
            "|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for row in throughput["rows"]:
            keras_run, f32, bf16 = row["keras_float32"], row["stage_float32"], row["stage_mixed_bfloat16"]
            base = keras_run["images_per_second"]
            lines.append(
                f"| {row['preset']} | {bf16['result']['parameters']:,} | {row['epochs']} | {base:,.0f} | "
                f"{f32['images_per_second']:,.0f} ({f32['images_per_second'] / base:.2f}x) | "
                f"{bf16['images_per_second']:,.0f} ({bf16['images_per_second'] / base:.2f}x) | "
                f"{percent(keras_run['test_accuracy'])} / {percent(f32['test_accuracy'])} / "
                f"{percent(bf16['test_accuracy'])} | {gigabytes(keras_run['max_rss_bytes'])} / "
                f"{gigabytes(f32['max_rss_bytes'])} / {gigabytes(bf16['max_rss_bytes'])} |")
        lines += ["", "Per-epoch wall seconds and the 1-minute load average at each epoch's end:", ""]
        for row in throughput["rows"]:
            for key in ("keras_float32", "stage_float32", "stage_mixed_bfloat16", "torch_float32"):
                run = row.get(key)
                if run is None:
                    continue
                lines.append(f"- {run['name']}: " + ", ".join(f"{s:.1f}" for s in run["epoch_seconds"])
                             + " s; load " + ", ".join(f"{v:.1f}" for v in run["epoch_load"])
                             + f"; {run['images_per_cpu_second']:,.0f} img per CPU-second")
        lines += efficiency_section(throughput)
    pipeline = results.get("pipeline")
    if pipeline:
        full = pipeline["full"]
        lines += [
            "",
            f"## Full `dvc repro` ({pipeline['dataset']}, {describe_default(pipeline)}, MLflow on)",
            "",
            "| stage | wall seconds | peak RSS |",
            "|---|---:|---:|",
        ]
        for name, seconds in full["stage_seconds"].items():
            rss = full["stage_peak_rss_bytes"].get(name)
            lines.append(f"| {name} | {seconds:.1f} | {gigabytes(rss) if rss else ''} |")
        lines += [
            f"| of which train's model.fit | {full['train_fit_seconds']} | |",
            f"| **total** | **{full['seconds']:.1f}** | {gigabytes(full['max_rss_bytes'])} (largest process) |",
            "",
            f"model.fit: {full['train_fit_seconds']} s; not training: {full['not_training_seconds']} s. Test metrics: "
            + ", ".join(f"{key} {value:.4f}" for key, value in full["metrics"].items() if isinstance(value, float))
            + f". TensorFlow loaded by: {', '.join(full['tensorflow_loaded_by']) or 'no process'}. "
            f"Load average {full['load_before']:.2f} before, {full['load_after']:.2f} after.",
            "",
            f"No-op `dvc repro`: {', '.join(str(entry['seconds']) for entry in pipeline['noop'])} s. Plots-only "
            f"(`{pipeline['plots_only']['key']}`): {pipeline['plots_only']['seconds']} s, stages run: "
            f"{', '.join(pipeline['plots_only']['stages_run']) or 'none'}.",
        ]
    mnist = results.get("mnist")
    if mnist:
        lines += [
            "",
            "## Default params on mnist-10k",
            "",
            f"{mnist['result']['architecture']} ({mnist['result']['parameters']:,} parameters, "
            f"{mnist['result']['precision']}), {mnist['result']['epochs_run']} epochs on {mnist['train_images']:,} "
            f"images in {mnist['result']['train_seconds']} s: test accuracy {percent(mnist['test_accuracy'])}, "
            f"peak RSS {gigabytes(mnist['max_rss_bytes'])}.",
        ]
    if results.get("sweep"):
        sweep = results["sweep"]
        grid = " × ".join(f"{key} ({', '.join(values)})" for key, values in sweep["sweep"].items())
        lines += ["", "## Sweep: parallel jobs on one machine", "",
                  f"{sweep['runs']} queued experiments ({grid}), {sweep['settings']['train.epochs']} epochs on "
                  f"{sweep['settings']['preprocess.limit']} mnist-10k digits, MLflow on; wall time from "
                  "`dvc queue start` to the last experiment done.", "",
                  "| way | wall time | succeeded | load average before → after |", "|---|---|---|---|"]
        lines += [f"| {way['way']} | {way['seconds']:.1f} s | {way['succeeded']} of {sweep['runs']} | "
                  f"{way['load_before']:.2f} → {way['load_after']:.2f} |" for way in sweep["ways"]]
    if results.get("predict"):
        from benchmarks.latency import markdown as latency_markdown

        lines += latency_markdown(results["predict"])
        lines += ["", "| model file | peak RSS of one predict | TensorFlow loaded |", "|---|---:|---|"]
        lines += [f"| {row['file']} ({row['format']}) | {gigabytes(row['max_rss_bytes'])} | "
                  f"{'yes' if row['tensorflow_loaded'] else 'no'} |" for row in results["predict"]["rows"]]
    if results.get("handwriting"):
        from benchmarks.handwriting import markdown as handwriting_markdown

        lines += handwriting_markdown(results["handwriting"])
    if results.get("time_to_accuracy"):
        from benchmarks.time_to_accuracy import markdown as time_to_accuracy_markdown

        lines += time_to_accuracy_markdown(results["time_to_accuracy"])
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in results["notes"]]
    return "\n".join(lines) + "\n"


NOTES = [
    "Wall-clock timings on a machine others may use at the same time: the load average is recorded beside each "
    "measurement, and the per-CPU-second throughput (training images / process CPU seconds) is less sensitive to "
    "it than the wall-clock figure.",
    "The throughput runs use the tutorial optimizer settings on both sides so only the training machinery differs; "
    "the stage runs as `stages.train.run` with MLflow off (MLflow is on in the full `dvc repro`).",
]
