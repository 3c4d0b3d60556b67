"""The measured processes of the benchmark, each run in its own interpreter by benchmarks/benchmark.py.

    python -m benchmarks.children stage SPEC.json OUT.json   # the train stage: stages.train.run(params)
    python -m benchmarks.children keras SPEC.json OUT.json   # the tutorials' way: model.fit on numpy arrays, float32
    python -m benchmarks.children torch SPEC.json OUT.json   # the same preset in plain PyTorch (optional extra)

A separate process per measurement keeps precision policies, op determinism and TensorFlow's thread pools from
leaking between runs. Both kinds time each epoch the same way, with one callback that runs after every other
callback (so checkpoint and backup writes count), from the end of one epoch to the end of the next; both validate
on the same validation set every epoch and report the accuracy of their final model on the test set.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

from benchmarks.efficiency import model_flops

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def epoch_clock():
    """A Keras callback recording wall and CPU seconds of every epoch and the load average at its end."""
    import keras

    class EpochClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []
            self.load: list[float] = []

        def on_train_begin(self, logs=None):
            self.last, self.last_cpu = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            now, cpu = time.perf_counter(), time.process_time()
            self.seconds.append(now - self.last)
            self.cpu_seconds.append(cpu - self.last_cpu)
            self.load.append(os.getloadavg()[0])
            self.last, self.last_cpu = now, cpu

    return EpochClock()


def evaluate_on_test(model, test_path: Path) -> tuple[float, float]:
    import numpy as np

    with np.load(test_path) as test:
        loss, accuracy = model.evaluate(test["x"], test["y"], batch_size=512, verbose=0)
    return float(accuracy), float(loss)


def versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__}


def run_stage(spec: dict) -> dict:
    """stages.train.run on prepared data, with params.yaml plus the spec's dotted overrides."""
    import keras
    import numpy as np

    from stages import train
    from stages.core.schema import parse_params, read_yaml, set_dotted

    raw = read_yaml(spec["params_file"])
    for key, value in spec["overrides"].items():
        set_dotted(raw, key, value)
    params = parse_params(raw)
    workdir = Path(spec["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)  # relative paths (the resume state among them) land in the run's own folder

    clock = epoch_clock()
    result = train.run(params, extra_callbacks=[clock])
    model = keras.models.load_model(params.paths.model)
    accuracy, loss = evaluate_on_test(model, Path(params.paths.processed) / "test.npz")
    with np.load(Path(params.paths.processed) / "train.npz") as train, np.load(
            Path(params.paths.processed) / "val.npz") as val:
        train_images, val_images = len(train["y"]), len(val["y"])
    return {
        "kind": "stage", "train_images": train_images, "val_images": val_images, "flops": model_flops(model),
        "batch_size": params.train.batch_size,
        "epoch_seconds": clock.seconds, "epoch_cpu_seconds": clock.cpu_seconds, "epoch_load": clock.load,
        "test_accuracy": accuracy, "test_loss": loss, "result": result, **versions(),
    }


def run_keras(spec: dict) -> dict:
    """The plain Keras script of the tutorials, on the same arrays, model, batch size and optimizer."""
    import keras
    import numpy as np

    from stages.core.architectures import build_model, presets

    processed = Path(spec["processed"])
    keras.utils.set_random_seed(spec["seed"])
    with np.load(processed / "train.npz") as train, np.load(processed / "val.npz") as val:
        x_train, y_train, x_val, y_val = train["x"], train["y"], val["x"], val["y"]
    model = build_model(presets()[spec["architecture"]], name=spec["architecture"])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=spec["learning_rate"]),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    clock = epoch_clock()
    started = time.perf_counter()
    model.fit(x_train, y_train, batch_size=spec["batch_size"], epochs=spec["epochs"],
              validation_data=(x_val, y_val), callbacks=[clock], verbose=2)
    seconds = time.perf_counter() - started
    accuracy, loss = evaluate_on_test(model, processed / "test.npz")
    return {
        "kind": "keras", "train_images": len(y_train), "val_images": len(y_val), "flops": model_flops(model),
        "batch_size": spec["batch_size"],
        "epoch_seconds": clock.seconds, "epoch_cpu_seconds": clock.cpu_seconds, "epoch_load": clock.load,
        "test_accuracy": accuracy, "test_loss": loss,
        "result": {"precision": keras.mixed_precision.global_policy().name, "train_seconds": round(seconds, 2),
                   "parameters": int(model.count_params()), "epochs_run": len(clock.seconds)},
        **versions(),
    }


def main() -> None:
    kind, spec_path, out_path = sys.argv[1:4]
    spec = json.loads(Path(spec_path).read_text())
    if kind == "torch":
        from benchmarks.torch_baseline import run_torch

        result = run_torch(spec)
    else:
        result = {"stage": run_stage, "keras": run_keras}[kind](spec)
    result["child_max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(out_path).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
