"""The latency table of `make bench` (its predict section): per shipped format (keras, onnx, onnx_int8, litert,
litert_int8) the file's size, held-out accuracy, agreement with Keras, warm single-image latency (1 thread, WARM_UP
calls, then TIMED timed: p50/p95 wall, p50 CPU), batch-of-BATCH throughput (1 thread) and the cold start of
`python -m stages.predict --model FILE digit.png` (median of `runs` fresh processes, wall and CPU).

Each format is measured in a process of its own (`python -m benchmarks.latency FORMAT FILE TEST_NPZ`), so one
runtime's threads and imports never slow another's. The machine is shared: wall times carry the load average, CPU
times do not depend on it as much.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FORMATS_MEASURED = ("keras", "onnx", "onnx_int8", "litert", "litert_int8")
WARM_UP, TIMED, BATCH = 50, 300, 500


def open_single_threaded(format: str, path: str):
    """The file in its runtime with one intra-op and one inter-op thread."""
    if format == "keras":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        from stages.core.architectures import load_model

        return load_model(path, 10, advice="rerun the benchmark")
    from stages.core.shipping import RUNTIMES

    return RUNTIMES[format](path, threads=1)


def measure_in_process(format: str, path: str, test_npz: str) -> dict:
    """The figures of one format, in this process: classes of every held-out digit, latency and throughput."""
    images = np.load(test_npz)["x"].astype(np.float32)
    model = open_single_threaded(format, path)
    classes = np.concatenate([np.asarray(model.predict_on_batch(images[start:start + BATCH])).argmax(axis=1)
                              for start in range(0, len(images), BATCH)])
    walls, cpus = [], []
    for index in range(WARM_UP + TIMED):
        image = images[index % len(images)][np.newaxis]
        wall, cpu = time.perf_counter(), time.process_time()
        model.predict_on_batch(image)
        if index >= WARM_UP:
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    batch = images[:BATCH]
    batch_seconds = []
    for _ in range(3):
        started = time.perf_counter()
        model.predict_on_batch(batch)
        batch_seconds.append(time.perf_counter() - started)
    return {"classes": classes.tolist(), "p50_ms": 1000 * float(np.percentile(walls, 50)),
            "p95_ms": 1000 * float(np.percentile(walls, 95)), "cpu_p50_ms": 1000 * float(np.percentile(cpus, 50)),
            "batch_images_per_s": BATCH / statistics.median(batch_seconds)}


def timed_predict(arguments: list[str], cwd: Path, env: dict[str, str],
                  timeout: float = 1800) -> tuple[subprocess.CompletedProcess, float, float]:
    """One fresh `python -m stages.predict ARGUMENTS`: the process, its wall seconds and its CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "stages.predict", *arguments], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return result, wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def cold_start(path: Path, image: Path, cwd: Path, env: dict[str, str], runs: int) -> dict:
    """`python -m stages.predict --model path image` in `runs` fresh processes: median wall and CPU seconds."""
    walls, cpus = [], []
    for _ in range(runs):
        result, wall, cpu = timed_predict(["--model", str(path), str(image)], cwd, env, timeout=600)
        walls.append(wall)
        cpus.append(cpu)
        if result.returncode != 0:
            raise RuntimeError(f"predict with {path} failed: {result.stderr.strip()[-500:]}")
    return {"cold_wall_s": statistics.median(walls), "cold_cpu_s": statistics.median(cpus)}


def folder_reading(files: dict[str, Path], folder: Path, cwd: Path, env: dict[str, str]) -> dict:
    """`predict --model FILE FOLDER --csv` per format of `files`, end to end from a fresh process (start-up,
    opening each PNG, framing, the model): images per second of wall time; and `predict README.md`, refused
    before any runtime loads."""
    images = sum(1 for _ in folder.glob("*.png"))
    rows = []
    for format, path in files.items():
        result, wall, cpu = timed_predict(["--model", str(path), str(folder), "--csv", str(cwd / f"{format}.csv")],
                                          cwd, env)
        if result.returncode != 0:
            raise RuntimeError(f"predict of a folder with {path} failed: {result.stderr.strip()[-500:]}")
        rows.append({"format": format, "images": images, "wall_s": wall, "cpu_s": cpu,
                     "images_per_s": images / wall, "load": os.getloadavg()[0]})
        print(f"  folder of {images}: {format} {images / wall:,.0f} images/s ({wall:.1f} s wall)", flush=True)
    refused, wall, cpu = timed_predict(["README.md"], cwd, env)
    if refused.returncode == 0:
        raise RuntimeError("predict README.md did not refuse a file that is not an image")
    return {"rows": rows, "not_an_image": {"wall_s": wall, "cpu_s": cpu, "line": refused.stderr.strip()}}


def measure(files: dict[str, Path], test_npz: Path, image: Path, cwd: Path, env: dict[str, str], runs: int) -> dict:
    """The table's rows, one per format of `files` (format -> file), Keras first: its classes are the reference."""
    labels = np.load(test_npz)["labels"].astype(np.int64)
    rows, reference = [], None
    for format, path in files.items():
        print(f"  latency: {format} ({path.name})", flush=True)
        result = subprocess.run([sys.executable, "-m", "benchmarks.latency", format, str(path), str(test_npz)],
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True, text=True,
                                timeout=1800)
        if result.returncode != 0:
            raise RuntimeError(f"measuring {format} failed: {result.stderr.strip()[-500:]}")
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        classes = np.array(figures.pop("classes"))
        reference = classes if reference is None else reference
        rows.append({"format": format, "file": path.name, "bytes": path.stat().st_size,
                     "accuracy": float(np.mean(classes == labels)), "agreement": float(np.mean(classes == reference)),
                     **figures, **cold_start(path, image, cwd, env, runs), "load": os.getloadavg()[0]})
    return {"rows": rows, "runs": runs, "warm_up": WARM_UP, "timed": TIMED, "batch": BATCH,
            "verdicts": int8_verdicts(rows)}


def int8_verdicts(rows: list[dict]) -> list[str]:
    """One line per int8 format: faster or not than its float file on this CPU, warm single image and batch."""
    by_format = {row["format"]: row for row in rows}
    lines = []
    for quantized, base in (("onnx_int8", "onnx"), ("litert_int8", "litert")):
        if quantized in by_format and base in by_format:
            q, f = by_format[quantized], by_format[base]
            single = "faster" if q["p50_ms"] < f["p50_ms"] else "NOT faster"
            batch = "faster" if q["batch_images_per_s"] > f["batch_images_per_s"] else "NOT faster"
            lines.append(f"{quantized} is {single} than {base} for one image on this CPU ({q['p50_ms']:.3f} vs "
                         f"{f['p50_ms']:.3f} ms p50) and {batch} in batches of {BATCH} "
                         f"({q['batch_images_per_s']:,.0f} vs {f['batch_images_per_s']:,.0f} images/s)")
    return lines


def markdown(latency: dict) -> list[str]:
    """The table, Ultralytics-style, and the int8 verdicts."""
    lines = ["", "## Latency per format", "",
             f"Held-out digits of the exported model's data; warm latency: 1 thread, {latency['warm_up']} warm-up and "
             f"{latency['timed']} timed single-image calls; throughput: batches of {latency['batch']}, 1 thread; "
             f"cold start: `python -m stages.predict --model FILE digit.png`, median of {latency['runs']} fresh "
             "processes (wall, and CPU = user + system). Load average (1 min) when each row ended beside it.", "",
             "| format | file | size | accuracy | agrees with Keras | p50 | p95 | p50 CPU | images/s (batch) | "
             "cold start wall | cold start CPU | load |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {row['format']} | {row['file']} | {row['bytes'] / 1e6:.2f} MB | {row['accuracy']:.4f} | "
              f"{row['agreement']:.2%} | {row['p50_ms']:.3f} ms | {row['p95_ms']:.3f} ms | "
              f"{row['cpu_p50_ms']:.3f} ms | "
              f"{row['batch_images_per_s']:,.0f} | {row['cold_wall_s']:.2f} s | {row['cold_cpu_s']:.2f} s | "
              f"{row['load']:.1f} |" for row in latency["rows"]]
    lines += [""] + [f"- {line}" for line in latency["verdicts"]]
    if latency.get("folder"):
        folder = latency["folder"]
        lines += ["", "### A folder in one command", "",
                  "`python -m stages.predict --model FILE FOLDER --csv answers.csv` on PNGs of the held-out digits, "
                  "from a fresh process (start-up, reading and framing each file, the model, the CSV):", "",
                  "| format | images | wall | CPU | images/s | load |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {row['format']} | {row['images']:,} | {row['wall_s']:.1f} s | {row['cpu_s']:.1f} s | "
                  f"{row['images_per_s']:,.0f} | {row['load']:.1f} |" for row in folder["rows"]]
        refused = folder["not_an_image"]
        lines += ["", f"`predict README.md` refuses in {refused['wall_s']:.2f} s wall ({refused['cpu_s']:.2f} s CPU), "
                  f"no runtime loaded: `{refused['line']}`"]
    return lines


def main(argv: list[str]) -> None:
    format, path, test_npz = argv
    print(json.dumps(measure_in_process(format, path, test_npz)))


if __name__ == "__main__":
    main(sys.argv[1:])
