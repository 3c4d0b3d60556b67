"""Train stage: build the Keras model params.yaml describes and fit it on the processed data.

Reads  {paths.processed}/train.npz, val.npz, dataset.json; params seed, model.*, train.*, tracking.*
Writes {paths.model} (best epoch by train.checkpoint_monitor), {paths.history}, {paths.summary}, {paths.run}
       (run.json also names the data: the dataset and its split sizes, from dataset.json)
Run alone: python -m stages.train

An interrupted run resumes from its last finished epoch: the state lives in {paths.resume}/<key>/ (outside DVC's outs,
which DVC deletes before rerunning the stage), keyed by the model, training params and data, and is removed once
training completes.

Environment, read before TensorFlow starts and kept out of params, the resume key and DVC's run-cache (they change
how fast a run goes, not what it computes):
  STAGES_JOBS=N               N trainings share this machine's cores (`dvc queue start -j N`, N search workers):
                              TensorFlow's intra- and inter-op thread pools get cores / N threads each
  STAGES_TEST_CPU_DEVICES=N   test hook: split the CPU into N logical devices, so `train.distribute: mirrored`
                              has N replicas on a machine without GPUs
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages import tracking
from stages.architectures import Architecture, SpecError, build_model, resolve_spec
from stages.common import PipelineError, atomic_path, load_npz, write_csv, write_json, write_text
from stages.datasets import data_summary, read_data_info
from stages.entry import KERAS_UNUSED_IMPORTS, stage_main
from stages.params import Params

BEST_WEIGHTS = "best.weights.npz"  # in the resume folder: the best epoch's weights (np.savez order)
HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds"]
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
JOBS_VARIABLE = "STAGES_JOBS"
TEST_CPU_DEVICES_VARIABLE = "STAGES_TEST_CPU_DEVICES"


def load_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = load_npz(directory / f"{split}.npz", ("x", "y"), writer="preprocess")
    return arrays["x"], arrays["y"]


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def choose_precision(requested: str) -> str:
    """Resolve `auto`: bf16 only where the hardware computes it natively (emulated bf16 is slower than float32)."""
    if requested != "auto":
        return requested
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        if capability >= (8, 0):
            return "mixed_bfloat16"
    return "mixed_bfloat16" if cpu_has_native_bf16() else "float32"


def thread_share(jobs: str | None, cores: int) -> int | None:
    """Threads per pool for one of `jobs` trainings sharing `cores`; None keeps TensorFlow's default (every core)."""
    if not jobs:
        return None
    if not jobs.isdigit() or int(jobs) < 1:
        raise PipelineError(f"{JOBS_VARIABLE}={jobs!r}: expected the number of parallel trainings, e.g. {JOBS_VARIABLE}=2")
    return max(1, cores // int(jobs))


def configure_devices() -> None:
    """What TensorFlow accepts only before it starts: the thread pools' size and the tests' split of the CPU."""
    import tensorflow as tf

    share = thread_share(os.environ.get(JOBS_VARIABLE), len(os.sched_getaffinity(0)))
    if share:
        # Each of N jobs would otherwise start a pool per core, and N pools fight over the same cores.
        tf.config.threading.set_intra_op_parallelism_threads(share)
        tf.config.threading.set_inter_op_parallelism_threads(share)
    replicas = int(os.environ.get(TEST_CPU_DEVICES_VARIABLE) or 1)
    if replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)


def choose_strategy(requested: str):
    """A MirroredStrategy over the local accelerators, or None for Keras' default single device."""
    import tensorflow as tf

    if requested == "off":
        return None
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    if requested == "auto" and len(gpus) < 2:
        return None
    # Without GPUs: the CPU's logical devices (one, unless the test hook split it).
    return tf.distribute.MirroredStrategy(gpus or [device.name for device in tf.config.list_logical_devices("CPU")])


def make_optimizer(params: Params, steps_per_epoch: int):
    import keras

    settings = params.train.optimizer
    classes = {
        "adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "nadam": keras.optimizers.Nadam,
        "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop, "adadelta": keras.optimizers.Adadelta,
        "adagrad": keras.optimizers.Adagrad, "adamax": keras.optimizers.Adamax, "lion": keras.optimizers.Lion,
    }
    learning_rate = settings.learning_rate
    if params.train.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=params.train.epochs * steps_per_epoch
        )
    try:
        return classes[settings.name](learning_rate=learning_rate, **settings.kwargs)
    except (TypeError, ValueError) as error:
        raise PipelineError(f"train.optimizer.kwargs: {error} (optimizer {settings.name!r})") from None


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int):
    """A tf.data pipeline over in-memory arrays, in order: batched, prefetched (for validation)."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def make_training_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, epochs: range):
    """The batches of all `epochs` in one stream, each epoch shuffled by a permutation of (seed, epoch) alone.

    tf.data's own reshuffle draws each epoch's order from how often the dataset was iterated before, so a resumed
    run (a fresh iterator) would see epoch 1's order again; keyed by the epoch, a resume sees the same batches.
    """
    import tensorflow as tf

    count = len(x)
    images, labels = tf.constant(x), tf.constant(y)

    def epoch_batches(epoch):
        order = tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64),
                                                         seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    batches = tf.data.Dataset.range(epochs.start, epochs.stop).flat_map(epoch_batches)
    return batches.map(lambda index: (tf.gather(images, index), tf.gather(labels, index))).prefetch(tf.data.AUTOTUNE)


def content_hash(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def resume_key(params: Params, data_hash: str) -> str:
    """Identify a training run by what determines it, so a resume never mixes two different runs."""
    spec = {"seed": params.seed, "model": params.model.model_dump(), "train": params.train.model_dump(),
            "data": data_hash}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Callbacks:
    """What fit hands to Keras (`ordered`), and the two callbacks it reads afterwards, by name."""

    epoch_log: Any  # its `rows` are the history
    backup: Any | None  # BackupAndRestore when train.resume is on
    ordered: list = field(default_factory=list)


def make_callbacks(params: Params, resume_dir: Path, initial_history: pd.DataFrame, extra: list) -> Callbacks:
    import keras

    class EpochLog(keras.callbacks.Callback):
        """Appends each finished epoch (with its learning rate and duration) to the resumable history file."""

        def __init__(self, path: Path, history: pd.DataFrame):
            super().__init__()
            self.path, self.rows = path, history.to_dict("records")

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            row = {"epoch": epoch + 1, **{k: float(logs[k]) for k in HISTORY_COLUMNS[1:5] if k in logs}}
            row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            row["seconds"] = time.perf_counter() - self.started
            self.rows.append(row)
            write_csv(self.path, pd.DataFrame(self.rows, columns=HISTORY_COLUMNS))
            logs["learning_rate"], logs["seconds"] = row["learning_rate"], row["seconds"]

    class StopAtAccuracy(keras.callbacks.Callback):
        """The course's callback: stop once the monitored accuracy reaches the target."""

        def __init__(self, monitor: str, target: float):
            super().__init__()
            self.monitor, self.target = monitor, target

        def on_epoch_end(self, epoch, logs=None):
            if (logs or {}).get(self.monitor, 0.0) >= self.target:
                print(f"\n{self.monitor} reached {self.target}: stopping after epoch {epoch + 1}")
                self.model.stop_training = True

    class EpochSeeds(keras.callbacks.Callback):
        """Reseeds dropout and augmentation from (seed, epoch, layer) at each epoch's start.

        Their generators' states are not in the weights BackupAndRestore saves; a resumed run would draw epoch 1's
        masks again. Keyed by the epoch, a resumed epoch draws what the uninterrupted one drew.
        """

        def __init__(self, seed: int):
            super().__init__()
            self.seed = seed

        def on_epoch_begin(self, epoch, logs=None):
            # Keras: `variables` are the weights plus the random seeds' states (metrics live elsewhere).
            weights = {id(variable) for variable in self.model.weights}
            states = [variable for variable in self.model.variables if id(variable) not in weights]
            for index, state in enumerate(states):
                start = np.random.SeedSequence((self.seed, epoch, index)).generate_state(1)[0]
                state.assign(np.array([start, 0], dtype=state.dtype))

    class BestCheckpoint(keras.callbacks.Callback):
        """Keeps the best epoch's weights by `monitor`, written atomically: ModelCheckpoint writes in place, and a
        kill or a full disk during the write would leave a broken file that a resumed run then loads.

        Only the weights, as one .npz: the fit ends by loading them into the model it has. Keras's own writers
        walk every object of the model and optimizer, about a second per write on 2 cores, a tenth of a small
        model's epoch; this write takes a few milliseconds.
        """

        def __init__(self, path: Path, monitor: str, best: float | None):
            super().__init__()
            self.path, self.monitor, self.lower_is_better = path, monitor, "loss" in monitor
            self.best = best if best is not None else (np.inf if self.lower_is_better else -np.inf)

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(self.monitor)
            if value is None or not (value < self.best if self.lower_is_better else value > self.best):
                return  # NaN never improves
            with atomic_path(self.path) as tmp:
                np.savez(tmp, *self.model.get_weights())
            self.best = float(value)

    settings = params.train
    monitor = settings.checkpoint_monitor
    best = None
    if monitor in initial_history and len(initial_history):
        # A resumed run must not overwrite the best checkpoint with a worse epoch.
        column = initial_history[monitor]
        best = float(column.min() if "loss" in monitor else column.max())
    epoch_log = EpochLog(resume_dir / "history.csv", initial_history)
    callbacks = [epoch_log, EpochSeeds(params.seed), BestCheckpoint(resume_dir / BEST_WEIGHTS, monitor, best)]
    if settings.early_stopping.enabled:
        stopping = settings.early_stopping
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=stopping.monitor, patience=stopping.patience, restore_best_weights=stopping.restore_best_weights
        ))
    if settings.target_accuracy is not None:
        callbacks.append(StopAtAccuracy(settings.target_monitor, settings.target_accuracy))
    if settings.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=params.paths.tensorboard))
    callbacks.extend(extra)
    backup = None
    if settings.resume:
        # Last, so the epoch's history row and checkpoint exist before the epoch counts as finished.
        backup = keras.callbacks.BackupAndRestore(str(resume_dir / "backup"), double_checkpoint=True)
        callbacks.append(backup)
    return Callbacks(epoch_log, backup, callbacks)


def configure(params: Params) -> str:
    """Seed everything, switch on determinism and set the precision policy; returns the precision used."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(params.seed)
    if params.train.deterministic:
        # Before compile(): Keras decides on XLA when compiling, and determinism must already be on.
        tf.config.experimental.enable_op_determinism()
    precision = choose_precision(params.train.precision)
    keras.mixed_precision.set_global_policy(precision)
    return precision


def backed_up_epoch(metadata: Path) -> int | None:
    """The last finished epoch BackupAndRestore recorded, or None when its file is missing or unreadable."""
    try:
        return int(json.loads(metadata.read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def repair_backup(backup: Path) -> None:
    """A kill while Keras writes its backup metadata leaves that file unreadable, and Keras then fails on every
    resume; fall back to the previous backup (what Keras does for unreadable weights), or else start over."""
    metadata = backup / "training_metadata.json"
    if not metadata.exists() or backed_up_epoch(metadata) is not None:
        return
    previous = backup / "training_metadata.json.bkp"
    if backed_up_epoch(previous) is not None and (backup / "latest.weights.h5.bkp").exists():
        shutil.copy(backup / "latest.weights.h5.bkp", backup / "latest.weights.h5")
        shutil.copy(previous, metadata)
    else:
        shutil.rmtree(backup)


def build(params: Params, architecture: Architecture, steps_per_epoch: int, strategy=None):
    """The compiled model params describe, its variables placed by `strategy` if any; a bad layer, shape or
    optimizer argument raises PipelineError."""
    import keras

    with strategy.scope() if strategy else contextlib.nullcontext():
        try:
            model = build_model(architecture.layers, name=architecture.name, where=architecture.where)
        except SpecError as error:
            raise PipelineError(str(error)) from None
        model.compile(
            optimizer=make_optimizer(params, steps_per_epoch),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=params.train.label_smoothing),
            metrics=["accuracy"],
        )
    return model


def fit(params: Params, model, train: tuple, val: tuple, resume_dir: Path, extra_callbacks: list = ()):
    """Fit the compiled model, resuming if resume_dir holds a backup; returns (model at its best epoch, history).

    One process drives every replica of a MirroredStrategy and Keras calls each callback once per epoch with the
    replicas' metrics already combined: the history, checkpoint, backup and MLflow callbacks each write once.
    """
    settings = params.train
    steps_per_epoch = int(np.ceil(len(train[0]) / settings.batch_size))
    history_path = resume_dir / "history.csv"
    initial = pd.read_csv(history_path) if settings.resume and history_path.exists() else pd.DataFrame()
    resume_dir.mkdir(parents=True, exist_ok=True)
    callbacks = make_callbacks(params, resume_dir, initial, list(extra_callbacks))
    epoch_log, backup = callbacks.epoch_log, callbacks.backup
    finished = 0
    if backup is not None:
        repair_backup(Path(backup.backup_dir))
        # Rows of an epoch whose backup never finished would be replayed: keep only backed-up epochs.
        finished = backed_up_epoch(Path(backup.backup_dir) / "training_metadata.json") or 0
        epoch_log.rows = [row for row in epoch_log.rows if row["epoch"] <= finished]
        if finished:
            print(f"resuming after epoch {finished} from {resume_dir}")
    # Batches of the global batch_size: the strategy splits each across its replicas.
    model.fit(
        make_training_dataset(*train, settings.batch_size, params.seed, range(finished, settings.epochs)),
        validation_data=make_dataset(*val, settings.batch_size),
        epochs=settings.epochs,
        steps_per_epoch=steps_per_epoch,  # one stream for all epochs: Keras keeps its iterator across them
        shuffle=False,  # the stream is already shuffled, per epoch
        callbacks=callbacks.ordered,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    best = resume_dir / BEST_WEIGHTS
    if best.exists() and not (settings.early_stopping.enabled and settings.early_stopping.restore_best_weights):
        with np.load(best) as weights:
            model.set_weights([weights[f"arr_{index}"] for index in range(len(weights.files))])
    history = pd.DataFrame(epoch_log.rows, columns=HISTORY_COLUMNS)
    return model, history


def summary_text(model) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line), line_length=100)
    return "\n".join(lines) + "\n"


def run(params: Params) -> dict:
    configure_devices()
    paths = params.paths
    processed = Path(paths.processed)
    train, val = load_split(processed, "train"), load_split(processed, "val")
    data_hash = content_hash([processed / "train.npz", processed / "val.npz"])
    tracking.check_tracking(params)  # seconds, before TensorFlow starts
    precision = configure(params)
    strategy = choose_strategy(params.train.distribute)
    architecture = resolve_spec(params.model.architecture, params.model.layers)
    # Built before the MLflow run opens: a configuration error leaves no run behind.
    model = build(params, architecture, int(np.ceil(len(train[0]) / params.train.batch_size)), strategy)
    resume_dir = Path(paths.resume) / resume_key(params, data_hash)
    if not params.train.resume:
        shutil.rmtree(resume_dir, ignore_errors=True)
    data_info = read_data_info(processed)
    with tracking.training_run(params, architecture.name, data_hash, data_info, resume_dir) as run_handle:
        started = time.perf_counter()
        model, history = fit(params, model, train, val, resume_dir, run_handle.keras_callbacks())
        seconds = time.perf_counter() - started

        with atomic_path(paths.model) as tmp:
            model.save(tmp)
        write_csv(paths.history, history)
        write_text(paths.summary, summary_text(model))
        result = {
            "architecture": architecture.name,
            "parameters": int(model.count_params()),
            "precision": precision,
            "replicas": strategy.num_replicas_in_sync if strategy else 1,
            "epochs_run": len(history),
            "train_seconds": round(seconds, 2),
            "best_val_accuracy": float(history["val_accuracy"].max()),
        }
        # run.json last: evaluate and plots attach to the MLflow run it names.
        write_json(paths.run, {**result, **data_summary(data_info),
                               **run_handle.log_training(params, model, result, example=val[0][:5])})
        shutil.rmtree(resume_dir, ignore_errors=True)
    print(f"trained {result['architecture']} ({result['parameters']:,} parameters, {precision}, "
          f"{result['replicas']} replica{'s' if result['replicas'] > 1 else ''}) for "
          f"{result['epochs_run']} epochs in {seconds:.1f} s; best val_accuracy {result['best_val_accuracy']:.4f}")
    return result


def main() -> None:
    stage_main(run, skip_imports=KERAS_UNUSED_IMPORTS, fast_exit=True, quiet_tensorflow=True)


if __name__ == "__main__":
    main()
