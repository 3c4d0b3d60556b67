"""Export stage: ship the trained model in each of export.formats (stages/core/formats.py: ONNX, LiteRT), each file
checked against Keras before it is written.

Reads `{paths.model}` and the held-out digits `{paths.processed}/test.npz`; params `export.*`, `data.dataset`.
Builds the inference model (stages/core/shipping.py: training-only augmentation dropped, float32, the trained
weights), exports each of `export.formats` into `{paths.export_dir}` and runs
the file with its own runtime (ONNX Runtime, the LiteRT interpreter) on every held-out digit: it is written only if
it gives the float32 Keras model's class on each of them and no probability further than `export.tolerance` from
it. A format whose exporter or runtime is missing or fails stops the stage with one line; the files already
checked stay.

The temperature train fitted (run.json) is folded into the inference model (the logits layer's weights scaled by
1/T), so the .onnx and .tflite files answer calibrated on their own, and the reference they are checked against is
the Keras model with the same scaling; the ONNX file also names T in its metadata (`temperature`).

Writes `{paths.export}`: per file its size, sha256 and test accuracy, per format the agreement and max |Δp|
against the float32 Keras model, and the same for the model as trained (a bf16-trained model's float32 rebuild
differs from it slightly). The register stage logs and registers the files in MLflow.

ONNX files are not byte-reproducible (tf2onnx names nodes and tensors differently on each export), LiteRT files
are. Run alone with `python -m stages.export` (after `dvc repro train`).
"""

from __future__ import annotations

import stages.core.venv  # noqa: F401  (first: without the project's packages, one line, not a traceback)

from pathlib import Path

import numpy as np

from stages.core.architectures import load_model
from stages.core.calibration import scaled
from stages.core.datasets import class_names
from stages.core.entry import KERAS_UNUSED_IMPORTS, stage_main
from stages.core.files import require_files
from stages.core.formats import FORMATS, check_formats
from stages.core.records import (
    export_file,
    read_run,
    read_split,
    remove_exports,
    split_files,
    write_export,
)
from stages.core.schema import refuse
from stages.core.shipping import (
    TEMPERATURE_KEY,
    compare,
    export_checked,
    file_sha256,
    float_file_bytes,
    float_gate,
    inference_model,
    int8_gate,
)

BATCH_SIZE = 500


def file_entry(path: Path, architecture: str, format: str, probabilities: np.ndarray, labels: np.ndarray) -> dict:
    return {"file": str(path), "format": format, "architecture": architecture, "bytes": path.stat().st_size,
            "sha256": file_sha256(path), "test_accuracy": float(np.mean(probabilities.argmax(axis=1) == labels))}


def calibration_images(params) -> np.ndarray:
    """The first export.int8.calibration_images training digits (the split is shuffled): never held-out ones."""
    [train_path] = split_files(params.paths, "train")
    require_files({train_path: "preprocess"})
    return read_split(params.paths, "train", keys=("x",))["x"][:params.export.int8.calibration_images].astype(
        np.float32)


def gate_for(params, format: str, inference, reference, labels, written: dict[str, Path], metadata):
    """The check of `format`'s file: float_gate, or int8_gate against its float file (this run's, or one written
    to a temporary folder to be measured)."""
    base = FORMATS[format].quantizes
    if base is None:
        return float_gate(reference, params.export.tolerance)
    float_bytes = written[base].stat().st_size if base in written else float_file_bytes(inference, base, metadata)
    return int8_gate(reference, labels, float_bytes, params.export.int8)


def run(params) -> dict:
    """Export and check every format of export.formats; write and return the report."""
    refuse(check_formats(params.export.formats))
    paths = params.paths
    [test_path], model_path = split_files(paths, "test"), Path(paths.model)
    require_files({test_path: "preprocess", model_path: "train"})
    arrays = read_split(paths, "test")
    images, labels = arrays["x"].astype(np.float32), arrays["labels"].astype(np.int64)

    model = load_model(model_path, len(class_names(params.data.dataset)), advice="rerun `dvc repro train`")
    # Folded into the shipped files, so they answer calibrated alone; None: train fitted none (the files say so).
    record = read_run(paths)
    temperature = record.temperature if "temperature" in record.fields else None
    inference = inference_model(model, temperature or 1.0)
    trained = scaled(np.asarray(model.predict(images, batch_size=BATCH_SIZE, verbose=0), dtype=np.float64),
                     temperature or 1.0)
    reference = np.asarray(inference.predict(images, batch_size=BATCH_SIZE, verbose=0), dtype=np.float64)
    accuracy = float(np.mean(reference.argmax(axis=1) == labels))

    report = {"test_images": len(labels), "tolerance": params.export.tolerance,
              "trained_vs_float32": compare(trained, reference),
              "temperature": temperature,
              "files": {"keras": file_entry(model_path, model.name, "keras", trained, labels)}}
    metadata = {"architecture": model.name, "dataset": params.data.dataset, "test_accuracy": f"{accuracy:.6f}"}
    if temperature is not None:
        metadata[TEMPERATURE_KEY] = f"{temperature:g}"
    written = {}
    quantized = any(FORMATS[format].quantizes for format in params.export.formats)
    calibration = calibration_images(params) if quantized else None
    # Float formats first: an int8 file's size is measured against its float file's
    for format in sorted(params.export.formats, key=lambda name: FORMATS[name].quantizes is not None):
        path = export_file(paths, FORMATS[format].file)
        gate = gate_for(params, format, inference, reference, labels, written, metadata)
        check = export_checked(inference, format, path, images, gate, metadata, calibration)
        entry = file_entry(path, model.name, format, check.pop("probabilities"), labels)
        report["files"][format] = {**entry, "temperature": temperature}
        report[format] = {key: value for key, value in check.items() if key != "bytes"}
        written[format] = path
        if FORMATS[format].quantizes is None:
            print(f"{format}: {path} ({check['bytes'] / 1e6:.2f} MB), same class as Keras on all {len(labels):,} "
                  f"held-out digits, max |Δp| {check['max_abs_diff']:.1e}")
            continue
        print(f"{format}: {path} ({check['bytes'] / 1e6:.2f} MB, {check['size_ratio']:.0%} of "
              f"{FORMATS[format].quantizes}'s), same class as Keras on {check['agreement']:.2%} of "
              f"{len(labels):,} held-out digits, accuracy {-check['accuracy_loss'] * 100:+.2f} points")
    remove_exports(paths, [spec.file for name, spec in FORMATS.items() if name not in params.export.formats])
    write_export(paths, report)

    gap = report["trained_vs_float32"]
    print(f"the model as trained and its float32 rebuild: same class on {gap['agreement']:.2%} of the held-out "
          f"digits, max |Δp| {gap['max_abs_diff']:.1e}")
    return report


def main() -> None:
    stage_main(run, skip_imports=KERAS_UNUSED_IMPORTS, fast_exit=True, quiet_tensorflow=True)


if __name__ == "__main__":
    main()
